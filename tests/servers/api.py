#!/usr/bin/env python3
"""Test API server: HTTP/1.1 keep-alive, a few routes for the end-to-end scenarios.

usage: api.py BIND_ADDRESS PORT

  GET  /hello            200 text
  GET  /items/<id>       200 JSON
  GET  /status/<code>    that status (204/304 without body)
  GET  /chunked          200 with a chunked body
  POST /upload           reads the body (Content-Length or chunked), 201
  anything else          404
"""
import json
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send_body(self, code, body, ctype="text/plain"):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/hello":
            self.send_body(200, "hello\n")
        elif path.startswith("/items/"):
            self.send_body(200, json.dumps({"id": path[7:]}), "application/json")
        elif path.startswith("/status/"):
            code = int(path[8:])
            if code in (204, 304):
                self.send_response(code)
                self.end_headers()
            else:
                self.send_body(code, "status %d\n" % code)
        elif path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"first chunk\n", b"second\n", b"x" * 5000):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_body(404, "not found\n")

    def do_POST(self):
        n = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                n += len(self.rfile.read(size))
                self.rfile.readline()
        else:
            n = len(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        self.send_body(201, "stored %d bytes\n" % n)


class Server(ThreadingHTTPServer):
    daemon_threads = True


def main():
    bind, port = sys.argv[1], int(sys.argv[2])
    if ":" in bind:
        Server.address_family = socket.AF_INET6
    Server((bind, port), Handler).serve_forever()


if __name__ == "__main__":
    main()
