"""HTTP/1.1 `Upgrade: h2c` client with a fixed timing, for the HTTP/2 tests.

Sends GET PATH[0] as HTTP/1.1 with `Upgrade: h2c`, waits WAIT_MS, then reads: with a
wait, the 101, the server's SETTINGS and the whole answer on stream 1 usually arrive in
one read (curl, which reads at once, sees them in one or several reads by chance). Then
it sends the HTTP/2 connection preface and GETs the other PATHs on streams 3, 5, ... of
the same connection, reads every answer, sends GOAWAY and closes. Prints "STREAM STATUS"
per answer (STATUS from the HPACK static table, `?` for other codes) after a first line
"port LOCAL_PORT"; exits non-zero if
an answer is missing. With --peek it first peeks at one byte (MSG_PEEK) before each read
of HTTP/2 frames, as curl does before it reuses a connection.

Usage: python3 h2c_upgrade_client.py [--peek] PORT WAIT_MS PATH...
"""

import base64
import socket
import struct
import sys
import time

# :status values of the HPACK static table (RFC 7541 Appendix A), by indexed byte.
STATIC_STATUS = {0x88: "200", 0x89: "204", 0x8A: "206", 0x8B: "304", 0x8C: "400", 0x8D: "404", 0x8E: "500"}


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def literal(name_index, value):
    # Literal header field without indexing, indexed name, no Huffman (RFC 7541 6.2.2).
    assert name_index < 15 and len(value) < 127
    return bytes([name_index, len(value)]) + value.encode()


def request_block(path, authority):
    # :method GET (2), :scheme http (6) from the static table; :authority (1), :path (4).
    return b"\x82\x86" + literal(1, authority) + literal(4, path)


def main():
    args = sys.argv[1:]
    peek = args[0] == "--peek"
    if peek:
        args = args[1:]
    port, wait_ms, paths = int(args[0]), int(args[1]), args[2:]
    authority = "127.0.0.1:%d" % port
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    local_port = s.getsockname()[1]
    settings = base64.urlsafe_b64encode(struct.pack(">HI", 3, 100)).rstrip(b"=").decode()
    s.sendall(
        (
            "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            "Upgrade: h2c\r\nHTTP2-Settings: %s\r\n\r\n" % (paths[0], authority, settings)
        ).encode()
    )
    time.sleep(wait_ms / 1000)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            sys.exit("closed before the 101")
        buf += chunk
    head, buf = buf.split(b"\r\n\r\n", 1)
    if not head.startswith(b"HTTP/1.1 101"):
        sys.exit("no 101: %r" % head)
    # Our preface, an empty SETTINGS, then the other requests.
    out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0)
    streams = {1: paths[0]}
    for i, path in enumerate(paths[1:]):
        sid = 3 + 2 * i
        streams[sid] = path
        # HEADERS with END_STREAM | END_HEADERS.
        out += frame(1, 0x5, sid, request_block(path, authority))
    sent = False
    status = {}
    done = set()
    while len(done) < len(streams):
        while len(buf) >= 9:
            length = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + length:
                break
            kind, flags = buf[3], buf[4]
            sid = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
            payload = buf[9 : 9 + length]
            buf = buf[9 + length :]
            if kind == 4 and not flags & 1:
                out += frame(4, 1, 0)  # SETTINGS ACK
            if kind == 1 and sid not in status:
                block = payload
                if flags & 0x8:  # PADDED
                    block = block[1 : len(block) - block[0]]
                if flags & 0x20:  # PRIORITY
                    block = block[5:]
                status[sid] = STATIC_STATUS.get(block[0], "?") if block else "?"
            if kind in (0, 1) and flags & 1:
                done.add(sid)
            if kind == 3 and sid in streams:
                sys.exit("stream %d reset" % sid)
            if kind == 7:
                sys.exit("GOAWAY from the server")
        if not sent or out:
            s.sendall(out)
            out = b""
            sent = True
        if len(done) < len(streams):
            if peek and not s.recv(1, socket.MSG_PEEK):
                break
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    s.sendall(frame(7, 0, 0, struct.pack(">II", max(streams), 0)))
    s.close()
    print("port", local_port)
    for sid in sorted(streams):
        print(sid, status.get(sid, "-"), streams[sid])
    sys.exit(0 if done >= set(streams) else 1)


if __name__ == "__main__":
    main()
