"""Runs NVFlare 2.0.5's server_train with every unary gRPC call recorded.

Usage: python3 record_server.py OUTDIR server_train-args...
Each call N of method M is written as OUTDIR/NNNN_M_req.bin and
NNNN_M_resp.bin (the serialized protobufs, after gzip); OUTDIR/index.tsv
lists them in order.
"""
import os
import sys
import threading
import time

import grpc

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
lock = threading.Lock()
seq = [0]
index = open(os.path.join(out, "index.tsv"), "w")
index.write("seq\tmethod\treq_bytes\tresp_bytes\tstatus\tms\n")


def record(method, req, resp, status, ms):
    with lock:
        seq[0] += 1
        n = seq[0]
        name = method.rsplit("/", 1)[-1]
        req_b = req.SerializeToString()
        open(os.path.join(out, "%04d_%s_req.bin" % (n, name)), "wb").write(req_b)
        resp_b = b""
        if resp is not None:
            resp_b = resp.SerializeToString()
            open(os.path.join(out, "%04d_%s_resp.bin" % (n, name)), "wb").write(resp_b)
        index.write("%d\t%s\t%d\t%d\t%s\t%.1f\n" % (n, method, len(req_b), len(resp_b), status, ms))
        index.flush()


class Recorder(grpc.ServerInterceptor):
    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner, method = handler.unary_unary, details.method

        def wrapped(req, ctx):
            t0 = time.time()
            try:
                resp = inner(req, ctx)
            except BaseException as e:
                record(method, req, None, type(e).__name__, 1000 * (time.time() - t0))
                raise
            try:
                code = ctx.code()
            except BaseException:
                code = None
            record(method, req, resp, "OK" if code in (None, grpc.StatusCode.OK) else str(code), 1000 * (time.time() - t0))
            return resp

        return grpc.unary_unary_rpc_method_handler(
            wrapped, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )


real_server = grpc.server


def recording_server(*args, **kwargs):
    kwargs["interceptors"] = list(kwargs.get("interceptors") or []) + [Recorder()]
    return real_server(*args, **kwargs)


grpc.server = recording_server

from nvflare.private.fed.app.server import server_train  # noqa: E402

sys.argv = ["server_train"] + sys.argv[2:]
server_train.main()
# server_train returns once its threads run; Python >= 3.9 then refuses new
# work in their thread pools as the interpreter shuts down, so stay until
# killed (capture.sh does so when the clients are gone).
while True:
    time.sleep(3600)
