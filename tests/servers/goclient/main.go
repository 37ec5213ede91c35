// HTTPS client for the TLS tests, built with the local Go toolchain (crypto/tls).
// Usage: goclient URL COUNT DELAY_MS
// Waits DELAY_MS before the first request: a program with its own TLS code that starts
// after the agent is probed once the agent has seen its exec (tens of milliseconds).
package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"time"
)

func main() {
	url := os.Args[1]
	count, _ := strconv.Atoi(os.Args[2])
	delay, _ := strconv.Atoi(os.Args[3])
	time.Sleep(time.Duration(delay) * time.Millisecond)
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
		// HTTP/1.1 only: an empty map turns HTTP/2 off.
		TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{},
	}}
	for i := 0; i < count; i++ {
		resp, err := client.Get(fmt.Sprintf("%s/go/%d", url, i))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		fmt.Println(resp.StatusCode)
	}
}
