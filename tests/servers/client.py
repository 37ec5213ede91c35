#!/usr/bin/env python3
"""Scenario client: plays a JSON plan of HTTP requests, each connection keep-alive.

usage: client.py PLAN.json

The plan:
  {"host": "10.200.1.1", "port": 8080, "parallel": false,
   "conns": [{"start": 0.0,
              "requests": [{"method": "GET", "path": "/x", "headers": {...},
                            "body": "...", "pause": 0.1}, ...]}, ...]}

Every connection is one HTTP/1.1 keep-alive connection (reopened only when the server
closes it). `pause` is slept before its request; `start` is slept before the connection's
first request. With `parallel` the connections run at the same time (one thread each),
otherwise one after the other. Prints one JSON line: the number of requests answered, the
count per status code and any errors; exits 1 on an error.
"""
import http.client
import json
import sys
import threading
import time


def play(host, port, conn_plan, statuses, errors, lock):
    time.sleep(conn_plan.get("start", 0))
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        for r in conn_plan["requests"]:
            if r.get("pause"):
                time.sleep(r["pause"])
            body = r.get("body")
            conn.request(
                r["method"],
                r["path"],
                body=body.encode() if body is not None else None,
                headers=r.get("headers", {}),
            )
            resp = conn.getresponse()
            resp.read()
            with lock:
                statuses[str(resp.status)] = statuses.get(str(resp.status), 0) + 1
            if resp.will_close:
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=10)
    except (OSError, http.client.HTTPException) as e:
        with lock:
            errors.append("%s: %s" % (type(e).__name__, e))
    finally:
        conn.close()


def main():
    with open(sys.argv[1]) as f:
        plan = json.load(f)
    statuses, errors, lock = {}, [], threading.Lock()
    args = lambda c: (plan["host"], plan["port"], c, statuses, errors, lock)
    if plan.get("parallel"):
        threads = [threading.Thread(target=play, args=args(c)) for c in plan["conns"]]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for c in plan["conns"]:
            play(*args(c))
    print(json.dumps({"answered": sum(statuses.values()), "statuses": statuses, "errors": errors}))
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
