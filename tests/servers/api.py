#!/usr/bin/env python3
"""Test API server: HTTP/1.1 keep-alive, a few routes for the end-to-end scenarios.

usage: api.py BIND_ADDRESS PORT

  GET  /hello            200 text
  GET  /items/<id>       200 JSON; 404 for an id that is not a number, is above
                         ITEM_MAX or is a multiple of 17 (deleted items)
  GET  /items?page=N     200 JSON, a page of ids
  GET  /status/<code>    that status (204/304 without body)
  GET  /chunked          200 with a chunked body
  GET  /account          200 with a bearer token, an API key (header or query) or a
                         session cookie; 401 without any
  GET  /, /orders, /static/<file>
                         200 small page / JSON / asset
  POST /login            200 for `Authorization: Basic` of KNOWN_USER:KNOWN_PASSWORD,
                         401 for any other (or no) Basic credential
  POST /upload (and any other POST)
                         reads the body (Content-Length or chunked), 201
  anything else          404
"""
import base64
import json
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


ITEM_MAX = 100000
KNOWN_USER = "alice"
KNOWN_PASSWORD = "wonderland-42"


def item_exists(raw):
    return raw.isdigit() and 0 < int(raw) <= ITEM_MAX and int(raw) % 17 != 0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body are two writes: without this, Nagle holds the body until the
    # client's delayed ACK (40 ms a response on keep-alive connections).
    disable_nagle_algorithm = True

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

    def credential(self):
        query = self.path.split("?", 1)[1] if "?" in self.path else ""
        return (
            self.headers.get("Authorization", "").startswith("Bearer ")
            or "X-API-Key" in self.headers
            or "session=" in self.headers.get("Cookie", "")
            or any(p.startswith("api_key=") for p in query.split("&"))
        )

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/hello":
            self.send_body(200, "hello\n")
        elif path.startswith("/items/"):
            if item_exists(path[7:]):
                self.send_body(200, json.dumps({"id": path[7:]}), "application/json")
            else:
                self.send_body(404, '{"error":"no such item"}', "application/json")
        elif path == "/items":
            query = self.path.split("?", 1)[1] if "?" in self.path else ""
            page = next((p[5:] for p in query.split("&") if p.startswith("page=")), "1")
            first = (int(page) - 1) * 5 + 1 if page.isdigit() else 1
            ids = list(range(first, first + 5))
            self.send_body(200, json.dumps({"page": page, "ids": ids}), "application/json")
        elif path == "/account":
            if self.credential():
                self.send_body(200, '{"name":"someone","plan":"pro"}', "application/json")
            else:
                self.send_body(401, '{"error":"login required"}', "application/json")
        elif path == "/":
            self.send_body(200, "<!doctype html><title>shop</title><p>welcome</p>\n", "text/html")
        elif path == "/orders":
            self.send_body(200, '[{"id":1,"total":12.5}]', "application/json")
        elif path.startswith("/static/"):
            self.send_body(200, "/* asset */\n", "text/css" if path.endswith(".css") else "text/javascript")
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
        if self.path.split("?", 1)[0] == "/login":
            self.login()
        else:
            self.send_body(201, "stored %d bytes\n" % n)

    def login(self):
        auth = self.headers.get("Authorization", "")
        user = password = None
        if auth.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            except ValueError:
                pass
        if user == KNOWN_USER and password == KNOWN_PASSWORD:
            self.send_body(200, '{"token":"issued"}', "application/json")
        else:
            self.send_body(401, '{"error":"bad credentials"}', "application/json")


class Server(ThreadingHTTPServer):
    daemon_threads = True


def main():
    bind, port = sys.argv[1], int(sys.argv[2])
    if ":" in bind:
        Server.address_family = socket.AF_INET6
    Server((bind, port), Handler).serve_forever()


if __name__ == "__main__":
    main()
