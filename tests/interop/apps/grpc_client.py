"""A grpcio client that calls through the proxy: `grpc_client.py HOST:PORT TOKEN`.
Prints one JSON object of what it saw."""

import json
import sys

import grpc

target, token = sys.argv[1], sys.argv[2]
out = {}
with grpc.insecure_channel(target) as channel:
    spoof = (("x-line-user-id", "Uattacker"), ("x_line_channel_id", "1"), ("x-line-identity-jwt", "forged"))
    auth = (("authorization", f"Bearer {token}"),)
    unary = channel.unary_unary("/test.Echo/Unary")
    response, call = unary.with_call(b"hello", metadata=auth + spoof, timeout=10)
    out["unary"] = response.decode()
    out["echo_user"] = dict(call.initial_metadata()).get("x-echo-user")
    out["echo_keys"] = dict(call.initial_metadata()).get("x-echo-keys", "").split(",")
    out["unary_code"] = call.code().name
    try:
        channel.unary_unary("/test.Echo/Fail")(b"?", metadata=auth, timeout=10)
    except grpc.RpcError as e:
        out["fail"] = {"code": e.code().name, "details": e.details(), "trailing": dict(e.trailing_metadata())}
    stream = channel.unary_stream("/test.Echo/Count")(b"abcde", metadata=auth, timeout=10)
    out["stream"] = b"".join(stream).decode()
    out["stream_code"] = stream.code().name
    for name, metadata in (("no_token", ()), ("bad_token", (("authorization", "Bearer not-a-real-token"),))):
        try:
            unary(b"x", metadata=metadata, timeout=10)
            out[name] = {"code": "OK"}
        except grpc.RpcError as e:
            out[name] = {"code": e.code().name, "details": e.details()}
print(json.dumps(out), flush=True)
