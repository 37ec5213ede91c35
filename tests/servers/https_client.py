"""HTTPS client for the TLS tests (Python's ssl module, Debian's libssl.so.3).

Usage: https_client.py PORT COUNT BODY_BYTES
One keep-alive connection: COUNT GETs of /py/<i>, then one POST /upload of BODY_BYTES.
Prints one status per line.
"""
import http.client
import ssl
import sys

port, count, body = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
conn = http.client.HTTPSConnection("127.0.0.1", port, context=ssl._create_unverified_context())
for i in range(count):
    conn.request("GET", f"/py/{i}", headers={"Authorization": "Bearer py-client-token"})
    r = conn.getresponse()
    r.read()
    print(r.status)
if body:
    conn.request("POST", "/upload", body=b"b" * body, headers={"Content-Type": "application/octet-stream"})
    r = conn.getresponse()
    r.read()
    print(r.status)
conn.close()
