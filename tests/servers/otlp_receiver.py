#!/usr/bin/env python3
"""A real OTLP/HTTP receiver (protobuf), like an OpenTelemetry Collector's port 4318.

usage: otlp_receiver.py BIND_ADDRESS PORT OUT_DIR

  POST /v1/metrics   ExportMetricsServiceRequest -> 200, empty ExportMetricsServiceResponse
  POST /v1/traces    ExportTraceServiceRequest   -> 200, empty ExportTraceServiceResponse
  anything else      404; a body that does not decode: 400

Every request that decodes is written to OUT_DIR/received.jsonl as one JSON object per
line: {"path": ..., "request": <the message as JSON (protobuf's JSON mapping)>}, and its
raw body is appended to OUT_DIR/raw.bin, so a test can look at every byte received.
"""
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

SIGNALS = {
    "/v1/metrics": (ExportMetricsServiceRequest, ExportMetricsServiceResponse),
    "/v1/traces": (ExportTraceServiceRequest, ExportTraceServiceResponse),
}

LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def reply(self, code, body=b"", ctype="application/x-protobuf"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        signal = SIGNALS.get(self.path)
        if signal is None:
            self.reply(404, b"not found\n", "text/plain")
            return
        if self.headers.get("Content-Type") != "application/x-protobuf":
            self.reply(415, b"protobuf only\n", "text/plain")
            return
        request_type, response_type = signal
        request = request_type()
        try:
            request.ParseFromString(body)
        except DecodeError:
            self.reply(400, b"not a protobuf message\n", "text/plain")
            return
        line = json.dumps({"path": self.path, "request": MessageToDict(request)})
        with LOCK:
            with open(os.path.join(OUT_DIR, "raw.bin"), "ab") as raw:
                raw.write(body)
            with open(os.path.join(OUT_DIR, "received.jsonl"), "a") as out:
                out.write(line + "\n")
        self.reply(200, response_type().SerializeToString())


class Server(ThreadingHTTPServer):
    daemon_threads = True


def main():
    global OUT_DIR
    bind, port, OUT_DIR = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    Server((bind, port), Handler).serve_forever()


if __name__ == "__main__":
    main()
