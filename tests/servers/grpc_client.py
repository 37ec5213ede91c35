"""gRPC client for the HTTP/2 tests: grpcio without generated code (raw bytes), one
insecure channel (one h2c connection, prior knowledge) for every call.

Usage: python3 grpc_client.py PORT TOKEN [CALL...]

Calls, in order (all of them when none is named): SayHello (unary), ListFeatures
(server streaming, 3 replies), RecordRoute (client streaming, 4 requests), Chat (bidi, 2
requests and 2 replies), Secret (unary; fails with UNAUTHENTICATED unless TOKEN is
"good"). Every call carries the metadata "authorization: Bearer TOKEN". Prints
"CALL STATUS_CODE REPLIES" per call; exits non-zero if a call's outcome is not the
expected one.
"""

import sys

import grpc

SERVICE = "/demo.Greeter/"


def main():
    port, token = int(sys.argv[1]), sys.argv[2]
    names = sys.argv[3:] or ["SayHello", "ListFeatures", "RecordRoute", "Chat", "Secret"]
    metadata = (("authorization", "Bearer " + token),)
    failed = False
    with grpc.insecure_channel("127.0.0.1:%d" % port) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        calls = {
            "SayHello": lambda: [
                channel.unary_unary(SERVICE + "SayHello")(b"world", metadata=metadata, timeout=10)
            ],
            "ListFeatures": lambda: list(
                channel.unary_stream(SERVICE + "ListFeatures")(b"area", metadata=metadata, timeout=10)
            ),
            "RecordRoute": lambda: [
                channel.stream_unary(SERVICE + "RecordRoute")(
                    iter([b"p1", b"p2", b"p3", b"p4"]), metadata=metadata, timeout=10
                )
            ],
            "Chat": lambda: list(
                channel.stream_stream(SERVICE + "Chat")(
                    iter([b"hi", b"bye"]), metadata=metadata, timeout=10
                )
            ),
            "Secret": lambda: [
                channel.unary_unary(SERVICE + "Secret")(b"open", metadata=metadata, timeout=10)
            ],
        }
        expected_replies = {"SayHello": 1, "ListFeatures": 3, "RecordRoute": 1, "Chat": 2, "Secret": 1}
        for name in names:
            try:
                replies = calls[name]()
                code = grpc.StatusCode.OK
            except grpc.RpcError as e:
                replies = []
                code = e.code()
            print(name, code.value[0], len(replies), flush=True)
            if name == "Secret" and token != "good":
                failed |= code != grpc.StatusCode.UNAUTHENTICATED
            else:
                failed |= code != grpc.StatusCode.OK or len(replies) != expected_replies[name]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
