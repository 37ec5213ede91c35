"""gRPC server for the HTTP/2 tests: grpcio without generated code (raw bytes in and
out), over cleartext HTTP/2 (h2c, prior knowledge).

Usage: python3 grpc_server.py PORT

Service demo.Greeter:
  SayHello      unary             one reply
  ListFeatures  server streaming  three replies
  RecordRoute   client streaming  one reply after all requests
  Chat          bidi streaming    one reply per request
  Secret        unary             UNAUTHENTICATED ("denied") unless the metadata has
                                  "authorization: Bearer good"
"""

import sys
import time
from concurrent import futures

import grpc


def say_hello(request, context):
    return b"hello " + request


def list_features(request, context):
    for i in range(3):
        yield b"feature %d of %s" % (i, request)


def record_route(requests, context):
    count = sum(1 for _ in requests)
    return b"points %d" % count


def chat(requests, context):
    for r in requests:
        yield b"re: " + r


def secret(request, context):
    metadata = dict(context.invocation_metadata())
    if metadata.get("authorization") != "Bearer good":
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "denied")
    return b"the secret"


def main():
    port = int(sys.argv[1])
    handlers = {
        "SayHello": grpc.unary_unary_rpc_method_handler(say_hello),
        "ListFeatures": grpc.unary_stream_rpc_method_handler(list_features),
        "RecordRoute": grpc.stream_unary_rpc_method_handler(record_route),
        "Chat": grpc.stream_stream_rpc_method_handler(chat),
        "Secret": grpc.unary_unary_rpc_method_handler(secret),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("demo.Greeter", handlers),)
    )
    if server.add_insecure_port("127.0.0.1:%d" % port) != port:
        sys.exit("cannot listen on port %d" % port)
    server.start()
    print("listening", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop(0)


if __name__ == "__main__":
    main()
