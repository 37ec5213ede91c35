#!/usr/bin/env python3
"""Test API server whose requests make real downstream calls: DNS, PostgreSQL, Redis,
MySQL (MariaDB).

usage: downstream_api.py --port P --dns IP --pg-port P --redis-port P [--bind ADDR]
                         [--pg-password-role ROLE --pg-bad-password PW]
                         [--mysql-port P --mysql-user USER --mysql-password PW]

Run it in a private mount namespace whose /etc/resolv.conf names the test's DNS server
(`tests/src/downstream.rs` does), so that glibc's resolver asks that server.

Every route but /healthz needs `Authorization: Bearer <any token>` (401 without one).

  GET /items/<id>[?depth=N]
      a. getaddrinfo("db.observer.test", AF_UNSPEC): glibc sends the A and AAAA queries
         together (sendmmsg on a connected UDP socket): 2 DNS queries
      b. an A query for cache.observer.test built by hand, sendto/recvfrom on an
         unconnected UDP socket: 1 DNS query
      c. psycopg2 (simple query protocol, autocommit: no BEGIN/COMMIT), one connection
         to 127.0.0.1 as role `app`, database `shop`: the login, then N times (default 1)
         `SELECT name FROM items WHERE id = %s AND name <> %s` (psycopg2 puts the literals into the SQL
         text): 1 + N PostgreSQL calls
      d. redis-py, one connection: GET item:<id>, SET item:<id> canary-value-<id>: 2 Redis
         calls
      200 JSON {"id", "name"}; 404 when there is no such item
  GET /proxy/<id>
      an HTTP call to this server itself (http.client, a new connection to 127.0.0.1):
      GET /items/<id> with the same token, served by another thread: 1 HTTP call for
      this request, the DNS, PostgreSQL and Redis calls for the inner one. 200 JSON
  GET /extended/<id>
      psycopg 3 (extended query protocol: Parse/Bind/Describe/Execute/Sync), autocommit:
      the login and one Execute of `SELECT name FROM items WHERE id = $1`: 2 PostgreSQL
      calls. 200 JSON
  GET /secrets
      psycopg2 login as `app`, then `SELECT v FROM secrets`: permission denied (SQLSTATE
      42501). 403 JSON
  GET /login-bad
      psycopg2 login with a wrong password for the password role: authentication failed
      (SQLSTATE 28P01). 503 JSON
  GET /mysql/<id>
      PyMySQL (pure Python, autocommit=True: the server's autocommit is on already, so
      it sends nothing for it), one connection to 127.0.0.1:<--mysql-port> as
      --mysql-user, database `shop`. On the wire (checked with strace and the server's
      general log): the HandshakeResponse (mysql_native_password, no auth switch), then
      COM_QUERY `SELECT name FROM items WHERE id = <id>` (PyMySQL puts the literal into
      the text), COM_QUERY `SELECT v FROM secrets` answered ERR 1142 (SELECT command
      denied), COM_QUIT: 3 MySQL calls (the login, 2 queries), 1 failed. No DNS, no
      PostgreSQL, no Redis. 200 JSON {"id", "name", "secrets_errno"}; 404 when there is
      no such item; 503 without --mysql-port
  GET /healthz   200, no downstream call, no token needed

Prints `ready` on stdout once listening, and one line per request on stdout saying what
was done (`items id=1 dns=3 pg=2 redis=2`), for the tests' diagnostics.
"""
import argparse
import json
import os
import socket
import struct
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import psycopg
import psycopg2
import redis

try:  # only the /mysql route needs it
    import pymysql
except ImportError:
    pymysql = None

ARGS = None
LOG_LOCK = threading.Lock()


def log(line):
    with LOG_LOCK:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def dns_query_message(name, qtype=1):
    """A DNS query message: recursion desired, one question of `qtype`, class IN."""
    qid = int.from_bytes(os.urandom(2), "big")
    header = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return qid, header + qname + struct.pack(">HH", qtype, 1)


def resolve_by_hand(name):
    """One A query on an unconnected UDP socket (sendto/recvfrom); returns the rcode."""
    qid, msg = dns_query_message(name)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(msg, (ARGS.dns, 53))
        while True:
            answer, _ = s.recvfrom(4096)
            if len(answer) >= 12 and int.from_bytes(answer[:2], "big") == qid:
                return answer[3] & 0x0F


def pg2_connect(user="app", password=None):
    kwargs = dict(
        host="127.0.0.1",
        port=ARGS.pg_port,
        user=user,
        dbname="shop",
        connect_timeout=5,
        sslmode="disable",
        gssencmode="disable",
    )
    if password is not None:
        kwargs["password"] = password
    conn = psycopg2.connect(**kwargs)
    conn.autocommit = True
    return conn


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def send_json(self, code, doc):
        data = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlsplit(self.path)
        path = url.path
        query = parse_qs(url.query)
        if path == "/healthz":
            return self.send_json(200, {"ok": True})
        if not self.headers.get("Authorization", "").startswith("Bearer "):
            return self.send_json(401, {"error": "token required"})
        try:
            if path.startswith("/items/") and path[len("/items/") :].isdigit():
                depth = int(query.get("depth", ["1"])[0])
                return self.items(int(path[len("/items/") :]), depth)
            if path.startswith("/proxy/") and path[len("/proxy/") :].isdigit():
                return self.proxy(int(path[len("/proxy/") :]))
            if path.startswith("/extended/") and path[len("/extended/") :].isdigit():
                return self.extended(int(path[len("/extended/") :]))
            if path == "/secrets":
                return self.secrets()
            if path == "/login-bad":
                return self.login_bad()
            if path.startswith("/mysql/") and path[len("/mysql/") :].isdigit():
                return self.mysql(int(path[len("/mysql/") :]))
        except Exception as e:  # a test server: say what broke, keep serving
            log(f"error {path}: {type(e).__name__}: {e}")
            return self.send_json(500, {"error": type(e).__name__})
        return self.send_json(404, {"error": "no such route"})

    def items(self, item, depth):
        # a. glibc: A and AAAA in one sendmmsg on a connected UDP socket.
        addrs = socket.getaddrinfo(
            "db.observer.test", 5432, socket.AF_UNSPEC, socket.SOCK_STREAM
        )
        # b. by hand, on an unconnected socket.
        rcode = resolve_by_hand("cache.observer.test")
        # c. PostgreSQL, simple query protocol.
        name = None
        conn = pg2_connect()
        try:
            with conn.cursor() as cur:
                for _ in range(depth):
                    # A string literal too (psycopg2 quotes it into the text): the
                    # agent must keep neither.
                    cur.execute(
                        "SELECT name FROM items WHERE id = %s AND name <> %s",
                        (item, "canary-sql-literal"),
                    )
                    row = cur.fetchone()
                    name = row[0] if row else None
        finally:
            conn.close()
        # d. Redis, one connection.
        r = redis.Redis(host="127.0.0.1", port=ARGS.redis_port, socket_timeout=5)
        try:
            r.get(f"item:{item}")
            r.set(f"item:{item}", f"canary-value-{item}")
        finally:
            r.close()
            r.connection_pool.disconnect()
        log(
            f"items id={item} depth={depth} getaddrinfo={len(addrs)} rcode={rcode} "
            f"dns=3 pg={1 + depth} redis=2"
        )
        if name is None:
            return self.send_json(404, {"error": "no such item"})
        return self.send_json(200, {"id": item, "name": name})

    def proxy(self, item):
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", ARGS.port, timeout=10)
        try:
            conn.request(
                "GET",
                f"/items/{item}",
                headers={"Authorization": self.headers.get("Authorization", "")},
            )
            inner = conn.getresponse()
            inner.read()
        finally:
            conn.close()
        log(f"proxy id={item} inner={inner.status}")
        return self.send_json(200, {"id": item, "inner_status": inner.status})

    def extended(self, item):
        with psycopg.connect(
            host="127.0.0.1",
            port=ARGS.pg_port,
            user="app",
            dbname="shop",
            connect_timeout=5,
            sslmode="disable",
            gssencmode="disable",
            autocommit=True,
        ) as conn:
            row = conn.execute(
                "SELECT name FROM items WHERE id = %s", (item,)
            ).fetchone()
        log(f"extended id={item} pg=2")
        if row is None:
            return self.send_json(404, {"error": "no such item"})
        return self.send_json(200, {"id": item, "name": row[0]})

    def secrets(self):
        conn = pg2_connect()
        sqlstate = None
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT v FROM secrets")
                cur.fetchall()
        except psycopg2.Error as e:
            sqlstate = e.pgcode
        finally:
            conn.close()
        log(f"secrets sqlstate={sqlstate} pg=2")
        if sqlstate is None:
            return self.send_json(200, {"error": "secrets were readable"})
        return self.send_json(403, {"error": "forbidden", "sqlstate": sqlstate})

    def login_bad(self):
        try:
            pg2_connect(ARGS.pg_password_role, ARGS.pg_bad_password).close()
        except psycopg2.OperationalError as e:
            reason = "password authentication failed" in str(e)
            log(f"login-bad auth_failed={reason} pg=1")
            return self.send_json(503, {"error": "database login failed"})
        log("login-bad logged in")
        return self.send_json(200, {"error": "the bad password was accepted"})

    def mysql(self, item):
        if ARGS.mysql_port is None or pymysql is None:
            return self.send_json(503, {"error": "no MySQL server configured"})
        conn = pymysql.connect(
            host="127.0.0.1",
            port=ARGS.mysql_port,
            user=ARGS.mysql_user,
            password=ARGS.mysql_password,
            database="shop",
            autocommit=True,
            connect_timeout=5,
        )
        errno = None
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT name FROM items WHERE id = %s", (item,))
                row = cur.fetchone()
                try:
                    cur.execute("SELECT v FROM secrets")
                    cur.fetchall()
                except pymysql.MySQLError as e:
                    errno = e.args[0]
        finally:
            conn.close()
        log(f"mysql id={item} errno={errno} mysql=3")
        if row is None:
            return self.send_json(404, {"error": "no such item"})
        return self.send_json(200, {"id": item, "name": row[0], "secrets_errno": errno})


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--dns", required=True)
    p.add_argument("--pg-port", type=int, required=True)
    p.add_argument("--redis-port", type=int, required=True)
    p.add_argument("--pg-password-role", default="reporter")
    p.add_argument("--pg-bad-password", default="not-the-password")
    p.add_argument("--mysql-port", type=int, default=None)
    p.add_argument("--mysql-user", default="app")
    p.add_argument("--mysql-password", default="")
    ARGS = p.parse_args()
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer((ARGS.bind, ARGS.port), Handler)
    log("ready")
    server.serve_forever()


if __name__ == "__main__":
    main()
