#!/usr/bin/env python3
"""numpy's .npz and NVFlare's own download service, for flarego's interop tests.

  download_peer.py npz-make DIR           np.savez / np.savez_compressed files in DIR, and DIR/manifest.json
  download_peer.py npz-check NPZ...       np.load(allow_pickle=False) each; prints the arrays' manifest
  download_peer.py serve NVFLARE_SRC      fobs.dumps a Shareable whose arrays NVFlare serves by reference,
                                          then answers download requests with NVFlare's DownloadService
  download_peer.py loads NVFLARE_SRC      fobs.loads a payload from flarego, NVFlare downloading its arrays

NVFLARE_SRC is a folder holding nvflare/ (the peer tarball, extracted). serve and
loads talk over stdin/stdout in frames (a 4-byte big-endian length, then the
bytes); a frame from this side starts with a 3-byte tag:
  PAY payload     the FOBS payload (serve: NVFlare's; loads: read one from flarego first)
  REQ payload     a download request NVFlare sends (loads); flarego answers "RC\\n" + payload
  REP rc\\npayload NVFlare's answer to a request flarego sent (serve)
  END json        the manifest of the arrays NVFlare decoded (loads)
"""
import hashlib
import json
import os
import struct
import sys

import numpy as np


def manifest(arrays):
    return {k: [str(v.dtype), list(v.shape), hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()]
            for k, v in arrays.items()}


def test_arrays():
    return {
        "w": np.arange(12, dtype=np.float32).reshape(3, 4),
        "b": np.array([7, -1], dtype=np.int64),
        "big": np.linspace(0, 1, 300000, dtype=np.float64),  # over 2 MiB: a chunk of its own
        "flag": np.array(True),
        "h": np.arange(5, dtype=np.float16),
        "u": np.arange(256, dtype=np.uint8).reshape(16, 16),
    }


# Frames go to the real stdout; anything NVFlare prints goes to stderr.
_out = os.fdopen(os.dup(1), "wb")
os.dup2(2, 1)
_in = sys.stdin.buffer


def write_frame(b):
    _out.write(struct.pack(">I", len(b)) + b)
    _out.flush()


def read_frame():
    h = _in.read(4)
    if len(h) < 4:
        return None
    (n,) = struct.unpack(">I", h)
    b = _in.read(n)
    if len(b) != n:
        sys.exit("download_peer.py: truncated frame")
    return b


def nvflare(src):
    sys.path.insert(0, src)
    from nvflare.apis.utils.decomposers import flare_decomposers
    from nvflare.app_common.decomposers import common_decomposers, numpy_decomposers

    flare_decomposers.register()
    common_decomposers.register()
    numpy_decomposers.register()


class Cell:
    """The little of a CellNet cell that the download service and FOBS use."""

    def __init__(self, fqcn):
        self.fqcn = fqcn

    def get_fqcn(self):
        return self.fqcn

    def register_request_cb(self, channel, topic, cb):
        self.cb = cb

    def send_request(self, channel, target, topic, request, timeout=None, secure=False, optional=False,
                     abort_signal=None):
        from nvflare.fuel.f3.cellnet.defs import MessageHeaderKey
        from nvflare.fuel.f3.message import Message
        from nvflare.fuel.utils import fobs

        if (channel, topic) != ("download_service__", "download_service__download"):
            sys.exit("download_peer.py: a request on %s/%s" % (channel, topic))
        write_frame(b"REQ" + json.dumps([target]).encode() + b"\n" + fobs.dumps(request.payload))
        rep = read_frame()
        rc, _, payload = rep.partition(b"\n")
        return Message({MessageHeaderKey.RETURN_CODE: rc.decode()}, fobs.loads(payload) if payload else None)


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "npz-make":
        arrays = test_arrays()
        np.savez(os.path.join(args[0], "savez.npz"), **arrays)
        np.savez_compressed(os.path.join(args[0], "compressed.npz"), **arrays)
        with open(os.path.join(args[0], "manifest.json"), "w") as f:
            json.dump(manifest(arrays), f)
    elif cmd == "npz-check":
        out = {}
        for p in args:
            with np.load(p, allow_pickle=False) as z:
                out.update({k: z[k] for k in z.files})
        _out.write(json.dumps(manifest(out)).encode())
    elif cmd == "serve":
        nvflare(args[0])
        from nvflare.apis.dxo import DXO, DataKind
        from nvflare.fuel.f3.cellnet.defs import MessageHeaderKey
        from nvflare.fuel.f3.message import Message
        from nvflare.fuel.f3.streaming.download_service import DownloadService
        from nvflare.fuel.utils import fobs

        cell = Cell("server.py")
        s = DXO(DataKind.WEIGHTS, data=test_arrays()).to_shareable()
        s.set_header("__task_name__", "train")
        write_frame(b"PAY" + fobs.dumps(s, fobs_ctx={fobs.FOBSContextKey.CELL: cell}))
        while True:
            req = read_frame()
            if req is None:
                return
            rep = DownloadService._handle_download(Message({MessageHeaderKey.ORIGIN: "site-1.go"}, fobs.loads(req)))
            rc = rep.get_header(MessageHeaderKey.RETURN_CODE)
            write_frame(b"REP" + rc.encode() + b"\n" + (fobs.dumps(rep.payload) if rep.payload is not None else b""))
    elif cmd == "loads":
        nvflare(args[0])
        from nvflare.apis.dxo import from_shareable
        from nvflare.fuel.utils import fobs

        payload = read_frame()
        s = fobs.loads(payload, fobs_ctx={fobs.FOBSContextKey.CELL: Cell("server.py")})
        dxo = from_shareable(s)
        write_frame(b"END" + json.dumps({"task_name": s.get_header("__task_name__"),
                                         "arrays": manifest(dxo.data)}).encode())
    else:
        sys.exit("download_peer.py: unknown command " + cmd)


if __name__ == "__main__":
    main()
