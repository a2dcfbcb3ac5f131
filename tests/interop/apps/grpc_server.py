"""A grpcio server (raw-bytes messages: no protobuf needed): prints the port it
bound. /test.Echo/Unary echoes and names the user in its initial metadata;
/test.Echo/Fail answers NOT_FOUND with trailing metadata; /test.Echo/Count
streams the request's bytes one by one."""

import sys
from concurrent import futures

import grpc


def unary(request, context):
    metadata = context.invocation_metadata()
    user = ",".join(v for k, v in metadata if k == "x-line-user-id")
    keys = ",".join(sorted({k for k, _ in metadata}))
    context.send_initial_metadata((("x-echo-user", user), ("x-echo-keys", keys)))
    return request


def fail(request, context):
    context.set_trailing_metadata((("x-detail", "looked everywhere"),))
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")


def count(request, context):
    for b in request:
        yield bytes([b])


handlers = {
    "Unary": grpc.unary_unary_rpc_method_handler(unary),
    "Fail": grpc.unary_unary_rpc_method_handler(fail),
    "Count": grpc.unary_stream_rpc_method_handler(count),
}
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(f"LISTENING {port}", flush=True)
server.wait_for_termination()
sys.exit(0)
