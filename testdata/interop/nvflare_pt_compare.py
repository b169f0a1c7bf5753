"""Compares the global model an NVFlare server saved with the NUM_STEPS-weighted mean of the
sites' submissions (what InTimeAccumulateWeightedAggregator computes: sum(n_i * w_i) / sum(n_i)).

  nvflare_pt_compare.py MODEL.pt SUBMISSION...

MODEL.pt is PTFileModelPersistor's file ({"model": state dict, ...}, or a bare state dict), read
with torch.load(weights_only=True). Each SUBMISSION is a JSON file, or a directory whose *.json
files are read; a JSON file is one submission {"site": ..., "num_steps": N, "weights": PATH} or
{"submissions": [those]}. PATH, relative to its JSON file, is an .npz (arrays named by state-dict
key) or a .pt (a state dict, or {"model": state dict}).

Prints one JSON line: {"max_abs_diff", "worst_key", "keys", "sites", "total_steps",
"dtype_changes", "missing", "extra"}. Exits 1 when the keys or shapes differ, or when --tol T is
given and max_abs_diff exceeds it; 2 on unreadable input.
"""
import argparse
import glob
import json
import os
import sys

import numpy as np
import torch


def fail(msg, code=2):
    print(f"nvflare_pt_compare: {msg}", file=sys.stderr)
    sys.exit(code)


def state_dict(obj, what):
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict):
        fail(f"{what}: not a state dict ({type(obj).__name__})")
    return {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in obj.items()}


def load_weights(path):
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    if path.endswith(".pt"):
        return state_dict(torch.load(path, map_location="cpu", weights_only=True), path)
    fail(f"{path}: weights must be .npz or .pt")


def read_submissions(args):
    files = []
    for a in args:
        if os.path.isdir(a):
            found = sorted(glob.glob(os.path.join(a, "*.json")))
            if not found:
                fail(f"{a}: no *.json submissions")
            files += found
        else:
            files.append(a)
    subs = []
    for f in files:
        try:
            with open(f) as fh:
                doc = json.load(fh)
        except (OSError, ValueError) as e:
            fail(f"{f}: {e}")
        for s in doc.get("submissions", [doc]):
            if not isinstance(s, dict) or "num_steps" not in s or "weights" not in s:
                fail(f"{f}: a submission needs num_steps and weights")
            n = float(s["num_steps"])
            if not n > 0:
                fail(f"{f}: num_steps {s['num_steps']} is not positive")
            p = s["weights"] if os.path.isabs(s["weights"]) else os.path.join(os.path.dirname(f), s["weights"])
            subs.append((s.get("site", p), n, load_weights(p)))
    if not subs:
        fail("no submissions")
    return subs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("submission", nargs="+")
    ap.add_argument("--tol", type=float, default=None)
    a = ap.parse_args()
    try:
        saved = state_dict(torch.load(a.model, map_location="cpu", weights_only=True), a.model)
    except Exception as e:
        fail(f"{a.model}: {e}")
    subs = read_submissions(a.submission)
    total = sum(n for _, n, _ in subs)
    keys = list(subs[0][2])
    bad = False
    for site, _, w in subs[1:]:
        if list(w) != keys:
            print(f"nvflare_pt_compare: {site} sent keys {sorted(set(w) ^ set(keys))} the first site did not", file=sys.stderr)
            bad = True
    missing = [k for k in keys if k not in saved]
    extra = [k for k in saved if k not in keys]
    worst, worst_key, dtype_changes = 0.0, None, {}
    for k in keys:
        if k not in saved:
            continue
        mean = sum(n * w[k].astype(np.float64) for _, n, w in subs) / total
        got = saved[k]
        if got.shape != mean.shape:
            print(f"nvflare_pt_compare: {k}: saved shape {got.shape}, sent {mean.shape}", file=sys.stderr)
            bad = True
            continue
        if got.dtype != subs[0][2][k].dtype:
            dtype_changes[k] = f"{subs[0][2][k].dtype}->{got.dtype}"
        d = float(np.max(np.abs(got.astype(np.float64) - mean))) if mean.size else 0.0
        if d > worst or worst_key is None:
            worst, worst_key = d, k
    print(json.dumps({"max_abs_diff": worst, "worst_key": worst_key, "keys": len(keys),
                      "sites": [s for s, _, _ in subs], "total_steps": total,
                      "dtype_changes": dtype_changes, "missing": missing, "extra": extra}))
    if bad or missing or extra:
        sys.exit(1)
    if a.tol is not None and worst > a.tol:
        print(f"nvflare_pt_compare: max_abs_diff {worst} > tol {a.tol} (at {worst_key})", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
