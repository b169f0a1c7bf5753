#!/usr/bin/env python3
"""NVFlare's own FOBS, for flarego's interop tests.

Usage: fobs_peer.py NVFLARE_SRC dumps OUT | loads IN

NVFLARE_SRC is a folder holding nvflare/ (the peer tarball, extracted).
dumps writes a Shareable as NVFlare serialises it; loads reads one that
flarego wrote and prints what NVFlare finds in it, as JSON.
"""
import datetime
import json
import sys

sys.path.insert(0, sys.argv[1])

import numpy as np  # noqa: E402
from nvflare.apis.dxo import DXO, DataKind, from_shareable  # noqa: E402
from nvflare.apis.fl_context import FLContext  # noqa: E402
from nvflare.apis.shareable import Shareable  # noqa: E402
from nvflare.apis.utils.decomposers import flare_decomposers  # noqa: E402
from nvflare.app_common.decomposers import common_decomposers, numpy_decomposers  # noqa: E402
from nvflare.fuel.utils import fobs  # noqa: E402

flare_decomposers.register()
common_decomposers.register()
numpy_decomposers.register()


def main():
    cmd = sys.argv[2]
    if cmd == "dumps":
        dxo = DXO(DataKind.WEIGHTS, data={"w": np.arange(9, dtype=np.float32).reshape(3, 3),
                                          "n": np.array([7, -1], dtype=np.int64)},
                  meta={"NUM_STEPS_CURRENT_ROUND": 2})
        s = dxo.to_shareable()
        s.set_header("__task_name__", "train")
        s.set_header("__cookie_jar__", {"__task_id__": "t-1", "contribution_round": 0})
        s.set_header("pair", (1, "a"))
        s.set_header("when", datetime.datetime(2026, 12, 1, 18, 3, 57, 96082))
        ctx = FLContext()
        ctx.set_prop("__identity_name__", "server", private=False, sticky=True)
        s.set_peer_props(ctx.get_all_public_props())
        with open(sys.argv[3], "wb") as f:
            f.write(fobs.dumps(s))
        return
    if cmd == "loads":
        with open(sys.argv[3], "rb") as f:
            s = fobs.loads(f.read())
        out = {"type": type(s).__name__, "headers": {k: repr(v) for k, v in s.items() if k == "__headers__"}}
        out["header_keys"] = sorted(s.get("__headers__", {}).keys())
        out["task_name"] = s.get_header("__task_name__")
        dxo = from_shareable(s)
        out["kind"] = str(dxo.data_kind)
        out["meta"] = dxo.meta
        out["arrays"] = {k: [str(v.dtype), list(v.shape), float(v.sum())] for k, v in dxo.data.items()}
        print(json.dumps(out, default=str))
        return
    sys.exit("unknown command " + cmd)


main()
