#!/usr/bin/python3
"""A Python grpcio client (Debian's python3-grpcio) against an Interop server.

    interop_client.py HOST:PORT

Uses grpcio's generic API with the messages encoded by hand (no generated
Python code needed): interop.Msg is {1: string text, 2: int32 n}. Prints a
line per check; exit status 0 if all hold.
"""
import sys
import threading
import time

import grpc


def encode(text="", n=0):
    out = b""
    if text:
        data = text.encode()
        out += b"\x0a" + bytes([len(data)]) + data
    if n:
        out += b"\x10" + varint(n)
    return out


def varint(value):
    out = b""
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out += bytes([byte | 0x80])
        else:
            return out + bytes([byte])


def decode(data):
    text, n, i = "", 0, 0
    while i < len(data):
        tag = data[i]
        i += 1
        if tag == 0x0A:
            length = data[i]
            i += 1
            text = data[i:i + length].decode()
            i += length
        elif tag == 0x10:
            shift = 0
            while True:
                byte = data[i]
                i += 1
                n |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
        else:
            raise ValueError("unexpected tag %d" % tag)
    return text, n


failures = 0


def check(ok, what):
    global failures
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures += 1


def main(target):
    channel = grpc.insecure_channel(target)
    ident = dict(request_serializer=None, response_deserializer=None)
    echo = channel.unary_unary("/interop.Interop/Echo", **ident)
    count = channel.unary_stream("/interop.Interop/Count", **ident)
    sleep = channel.unary_unary("/interop.Interop/Sleep", **ident)
    cancellations = channel.unary_unary("/interop.Interop/Cancellations", **ident)
    fail = channel.unary_unary("/interop.Interop/Fail", **ident)

    reply, call = echo.with_call(encode("hello"), metadata=[("x-echo", "hi")], timeout=10)
    metadata = list(call.initial_metadata()) + list(call.trailing_metadata())
    check(decode(reply)[0] == "hello", "unary")
    check(("x-echoed", "hi") in [(m.key, m.value) for m in metadata], "metadata both ways")

    texts = [decode(m)[0] for m in count(encode(n=5), timeout=10)]
    check(texts == ["0", "1", "2", "3", "4"], "server streaming: %s" % texts)

    start = time.monotonic()
    try:
        sleep(encode(n=10000), timeout=0.1)
        check(False, "deadline: the call succeeded")
    except grpc.RpcError as error:
        check(error.code() == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - start < 5,
              "deadline: %s" % error.code())

    # The deadline above cancelled a Sleep too: once its handler has counted
    # it (1), this one is the next.
    before = 0
    for _ in range(1000):
        before = decode(cancellations(b"", timeout=10))[1]
        if before == 1:
            break
        time.sleep(0.01)
    check(before == 1, "the deadline reached the handler")
    future = sleep.future(encode(n=10000), timeout=30)
    threading.Timer(0.2, future.cancel).start()
    try:
        future.result()
        check(False, "cancel: the call succeeded")
    except grpc.FutureCancelledError:
        check(True, "cancel")
    seen = before
    for _ in range(500):
        seen = decode(cancellations(b"", timeout=10))[1]
        if seen > before:
            break
        time.sleep(0.01)
    check(seen == before + 1, "the handler saw the cancellation")

    try:
        fail(b"", timeout=10)
        check(False, "error status: the call succeeded")
    except grpc.RpcError as error:
        details = dict((m.key, m.value) for m in error.trailing_metadata()).get(
            "grpc-status-details-bin", b"")
        check(error.code() == grpc.StatusCode.FAILED_PRECONDITION
              and error.details() == "failed on purpose"
              and b"type.googleapis.com/interop.Msg" in details and b"detail" in details,
              "error status with details: %s %s" % (error.code(), error.details()))
    # Paths no server has (gRPC lets a client send any): UNIMPLEMENTED for
    # that call only; the connection and the other calls go on.
    for path in ["/", "//", "/no.Such/Method"]:
        try:
            channel.unary_unary(path, **ident)(b"", timeout=10)
            check(False, "bad path %r: the call succeeded" % path[:10])
        except grpc.RpcError as error:
            check(error.code() == grpc.StatusCode.UNIMPLEMENTED,
                  "bad path %r: %s" % (path[:10], error.code()))
    reply = echo(encode("still here"), timeout=10)
    check(decode(reply)[0] == "still here", "served after bad paths")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
