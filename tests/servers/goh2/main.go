// HTTP/2 over TLS with Go's standard library only (crypto/tls + net/http, which
// negotiate h2 through ALPN by default), for the HTTP/2 end-to-end tests.
//
// Usage:
//
//	goh2 server PORT CERT KEY
//	goh2 client URL CA COUNT [BEARER]
//
// The server answers GET /api/items/{id} (200, JSON), POST /api/items (201, the body
// length), GET /api/private (401 unless "Authorization: Bearer good") and 404 otherwise.
// The client trusts the certificates in the file CA (the server's self-signed
// certificate), sends COUNT GETs of
// /api/items/N, one POST of 1000 bytes and one GET /api/private (with the bearer token
// when given), all on one HTTP/2 connection, prints "PROTO STATUS PATH" per response and
// exits non-zero unless every response came over HTTP/2. It waits 500 ms before its
// first request: the agent probes a program with its own TLS code once it has seen its
// exec.
package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	switch os.Args[1] {
	case "server":
		if len(os.Args) != 5 {
			usage()
		}
		server(os.Args[2], os.Args[3], os.Args[4])
	case "client":
		if len(os.Args) != 5 && len(os.Args) != 6 {
			usage()
		}
		count, err := strconv.Atoi(os.Args[4])
		if err != nil {
			usage()
		}
		bearer := ""
		if len(os.Args) == 6 {
			bearer = os.Args[5]
		}
		client(os.Args[2], os.Args[3], count, bearer)
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: goh2 server PORT CERT KEY | goh2 client URL CA COUNT [BEARER]")
	os.Exit(2)
}

func server(port, cert, key string) {
	mux := http.NewServeMux()
	mux.HandleFunc("/api/items/", func(w http.ResponseWriter, r *http.Request) {
		id := strings.TrimPrefix(r.URL.Path, "/api/items/")
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, "{\"id\":%q,\"proto\":%q}\n", id, r.Proto)
	})
	mux.HandleFunc("/api/items", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.NotFound(w, r)
			return
		}
		n, _ := io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, "stored %d\n", n)
	})
	mux.HandleFunc("/api/private", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer good" {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		fmt.Fprintln(w, "secret")
	})
	srv := &http.Server{Addr: "127.0.0.1:" + port, Handler: mux}
	fmt.Println("listening")
	if err := srv.ListenAndServeTLS(cert, key); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func client(url, ca string, count int, bearer string) {
	pem, err := os.ReadFile(ca)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		fmt.Fprintln(os.Stderr, "no certificate in", ca)
		os.Exit(1)
	}
	// The default transport's settings (ForceAttemptHTTP2 among them): a transport with
	// its own TLS config only tries h2 when asked to.
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.TLSClientConfig = &tls.Config{RootCAs: roots}
	transport.ForceAttemptHTTP2 = true
	c := &http.Client{Transport: transport, Timeout: 10 * time.Second}
	time.Sleep(500 * time.Millisecond)

	do := func(method, path string, body []byte, auth string) {
		var rd io.Reader
		if body != nil {
			rd = bytes.NewReader(body)
		}
		req, err := http.NewRequest(method, url+path, rd)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		if auth != "" {
			req.Header.Set("Authorization", "Bearer "+auth)
		}
		resp, err := c.Do(req)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		fmt.Println(resp.Proto, resp.StatusCode, path)
		if resp.Proto != "HTTP/2.0" {
			fmt.Fprintln(os.Stderr, "not HTTP/2:", resp.Proto)
			os.Exit(3)
		}
	}
	for i := 0; i < count; i++ {
		do(http.MethodGet, fmt.Sprintf("/api/items/%d", i), nil, "")
	}
	do(http.MethodPost, "/api/items", bytes.Repeat([]byte("x"), 1000), "")
	do(http.MethodGet, "/api/private", nil, bearer)
}
