// A plaintext HTTP API server in Go, standard library only, for the downstream
// attribution test. net/http serves each connection in a goroutine of its own and runs
// the handler in it; goroutines move between threads (GOMAXPROCS 4) and one thread runs
// many, so only the goroutine tells which request a call serves.
//
// Usage:
//
//	godownstream PORT REDIS_PORT
//
// GET /items/{id}: on a new connection to Redis, speaking RESP by hand, `GET item:{id}`,
// a short sleep (the goroutine parks and may wake on another thread), then
// `SET item:{id} canary-value-{id}`; answers 200 with a small JSON body. Prints "ready"
// once listening.
package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// command is one RESP array of bulk strings.
func command(args ...string) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	return []byte(b.String())
}

// reply reads one simple reply: a status, an error, an integer or a bulk string.
func reply(r *bufio.Reader) error {
	line, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	switch line[0] {
	case '$':
		n, err := strconv.Atoi(strings.TrimSpace(line[1:]))
		if err != nil {
			return err
		}
		if n >= 0 {
			_, err = io.ReadFull(r, make([]byte, n+2))
		}
		return err
	case '-':
		return fmt.Errorf("redis: %s", strings.TrimSpace(line))
	}
	return nil
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: godownstream PORT REDIS_PORT")
		os.Exit(2)
	}
	runtime.GOMAXPROCS(4)
	redis := "127.0.0.1:" + os.Args[2]
	http.HandleFunc("/items/", func(w http.ResponseWriter, r *http.Request) {
		id := strings.TrimPrefix(r.URL.Path, "/items/")
		c, err := net.Dial("tcp", redis)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer c.Close()
		rd := bufio.NewReader(c)
		steps := [][]string{{"GET", "item:" + id}, {"SET", "item:" + id, "canary-value-" + id}}
		for i, s := range steps {
			if i > 0 {
				time.Sleep(2 * time.Millisecond)
			}
			if _, err := c.Write(command(s...)); err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
			if err := reply(rd); err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, "{\"id\":%q}\n", id)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:"+os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("ready")
	if err := http.Serve(ln, nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
