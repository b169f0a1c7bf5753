"""The Python peer's side of 'flarego bench persist': one timed operation per run.

  bench_persist.py save IN.pt KEYFILE OUT.enc   torch.load IN, then time torch.save + Fernet.encrypt (the seed's persistor)
  bench_persist.py load IN.enc KEYFILE          time Fernet.decrypt + torch.load
Prints {"seconds": ...} on stdout.
"""
import io
import json
import sys
import time

import torch
from cryptography.fernet import Fernet


def main():
    op, src, keyfile = sys.argv[1:4]
    f = Fernet(open(keyfile, "rb").read())
    if op == "save":
        obj = torch.load(src, weights_only=True)
        out = sys.argv[4]
        t0 = time.perf_counter()
        # What PTSecuredModelPersistor does: save, read back, encrypt, write.
        torch.save(obj, out)
        with open(out, "rb") as fh:
            data = fh.read()
        with open(out, "wb") as fh:
            fh.write(f.encrypt(data))
        dt = time.perf_counter() - t0
    elif op == "load":
        t0 = time.perf_counter()
        with open(src, "rb") as fh:
            token = fh.read()
        obj = torch.load(io.BytesIO(f.decrypt(token)), weights_only=True)
        n = sum(v.numel() for v in obj["model"].values())
        dt = time.perf_counter() - t0
        assert n > 0
    else:
        raise SystemExit("unknown op " + op)
    print(json.dumps({"seconds": dt}))


if __name__ == "__main__":
    main()
