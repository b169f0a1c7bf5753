"""Python peer for flarego's interop tests (make interop).

Run with Debian 12's python3 (torch 1.13, cryptography, numpy) or in the
Debian 13 root (torch 2.6, torchvision 0.21). Each sub-command
checks or produces files that the Go side checks in turn; a mismatch exits 1
with a message.

  peer.py fernet-encrypt KEYFILE IN OUT        Fernet(key).encrypt(IN) -> OUT
  peer.py fernet-decrypt KEYFILE IN OUT        Fernet(key).decrypt(IN) -> OUT
  peer.py fernet-rotated OLD NEW ORIG ROTATED  ROTATED is what MultiFernet([NEW, OLD]).rotate(ORIG) stands for:
                                                NEW opens it to ORIG's plaintext, OLD does not, same timestamp
  peer.py pt-check PT MANIFEST                 torch.load(PT) matches MANIFEST (torch >= 2.6: the default
                                                load, weights_only; older: weights_only=True)
  peer.py pt-make DIR                          write .pt files torch-side + DIR/manifest.json
  peer.py pickle-dumps OUT                     pickle.dumps(protocol 2) of a fixed object
  peer.py model-forward SD.pt X.pt OUT.pt MODE  PneumoniaModel logits (MODE eval|train) and, in train mode, the new state dict
  peer.py model-step SD.pt X.pt Y.pt LR OUT.pt  one Adam step with CrossEntropyLoss; saves loss, logits and the new state dict
  peer.py shareable-check OURS GOLDEN           both unpickle (stand-in nvflare classes) to equal Shareables
  peer.py flcontext-check OURS GOLDEN           both unpickle to equal FLContexts
  peer.py transform OUT.pt IMG...               per image: PIL resize to 256x256 (uint8) and the eval tensor
                                                (Resize, CenterCrop, ToTensor, Normalize), as the seed's pipeline
"""
import collections
import hashlib
import json
import os
import pickle
import sys

import numpy as np


def tensor_digest(t):
    import torch
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        raw = t.view(torch.int16).numpy().tobytes()
    else:
        raw = t.numpy().tobytes()
    return hashlib.sha256(raw).hexdigest()


DTYPES = {}


def dtype_name(dt):
    import torch
    return {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16",
            torch.bfloat16: "bfloat16", torch.int64: "int64", torch.int32: "int32",
            torch.int16: "int16", torch.int8: "int8", torch.uint8: "uint8", torch.bool: "bool"}[dt]


def manifest_of(sd):
    return {k: {"dtype": dtype_name(v.dtype), "shape": list(v.shape), "sha256": tensor_digest(v)}
            for k, v in sd.items()}


def torch_at_least(major, minor):
    import torch
    v = torch.__version__.split("+")[0].split(".")
    return (int(v[0]), int(v[1])) >= (major, minor)


def tload(path):
    """torch.load as a user calls it: the default (weights_only=True) since
    torch 2.6, weights_only=True asked for on older torches."""
    import torch
    if torch_at_least(2, 6):
        return torch.load(path)
    return torch.load(path, weights_only=True)


def fail(msg):
    print("peer.py: " + msg, file=sys.stderr)
    sys.exit(1)


def pneumonia_model():
    """The seed's PneumoniaModel, from the benchmark script flarego embeds (one definition)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))
    from bench_model import PneumoniaModel
    return PneumoniaModel()


def load_model(path):
    import torch
    obj = tload(path)
    sd = obj["model"] if "model" in obj else obj
    m = pneumonia_model()
    m.load_state_dict(sd, strict=True)
    return m


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "fernet-encrypt" or cmd == "fernet-decrypt":
        from cryptography.fernet import Fernet
        key = open(args[0], "rb").read()
        f = Fernet(key)
        data = open(args[1], "rb").read()
        out = f.encrypt(data) if cmd == "fernet-encrypt" else f.decrypt(data)
        open(args[2], "wb").write(out)
    elif cmd == "fernet-rotated":
        from cryptography.fernet import Fernet, InvalidToken, MultiFernet
        old, new = (Fernet(open(a, "rb").read()) for a in args[:2])
        orig, rotated = (open(a, "rb").read() for a in args[2:4])
        theirs = MultiFernet([new, old]).rotate(orig)
        if new.decrypt(rotated) != old.decrypt(orig) or new.decrypt(theirs) != new.decrypt(rotated):
            sys.exit("rotated token does not hold the original plaintext")
        if new.extract_timestamp(rotated) != old.extract_timestamp(orig) or new.extract_timestamp(theirs) != new.extract_timestamp(rotated):
            sys.exit("timestamps differ: %d, want %d" % (new.extract_timestamp(rotated), old.extract_timestamp(orig)))
        try:
            old.decrypt(rotated)
            sys.exit("the old key still opens the rotated token")
        except InvalidToken:
            pass
        print("rotated as MultiFernet.rotate, timestamp %d" % new.extract_timestamp(rotated))
    elif cmd == "pt-check":
        import torch
        obj = tload(args[0])
        want = json.load(open(args[1]))
        sd = obj["model"] if isinstance(obj, dict) and "model" in obj and not torch.is_tensor(obj["model"]) else obj
        if not isinstance(sd, collections.OrderedDict):
            fail("state dict is %s, not OrderedDict" % type(sd))
        got = manifest_of(sd)
        if list(got) != list(want):
            fail("keys differ: %s vs %s" % (list(got), list(want)))
        for k in want:
            if got[k] != want[k]:
                fail("%s: torch read %s, Go wrote %s" % (k, got[k], want[k]))
        if "train_conf" in want.get("__layout__", {}):
            pass
        print("pt-check: torch %s read %d tensors equal" % (torch.__version__, len(got)))
    elif cmd == "pt-make":
        import torch
        d = args[0]
        torch.manual_seed(1)
        man = {}
        # every dtype, random values, including 0-dim and empty tensors
        sd = collections.OrderedDict()
        for name, dt in [("f32", torch.float32), ("f64", torch.float64), ("f16", torch.float16),
                         ("bf16", torch.bfloat16)]:
            sd[name] = torch.randn(3, 5).to(dt)
        for name, dt in [("i64", torch.int64), ("i32", torch.int32), ("i16", torch.int16),
                         ("i8", torch.int8), ("u8", torch.uint8)]:
            sd[name] = torch.randint(-100 if dt != torch.uint8 else 0, 100, (4, 2), dtype=dt)
        sd["bool"] = torch.rand(7) > 0.5
        sd["scalar"] = torch.tensor(12345678901, dtype=torch.int64)
        sd["empty"] = torch.zeros(0, 3)
        torch.save(sd, os.path.join(d, "dtypes_zip.pt"))
        torch.save(sd, os.path.join(d, "dtypes_legacy.pt"), _use_new_zipfile_serialization=False)
        man["dtypes_zip.pt"] = manifest_of(sd)
        man["dtypes_legacy.pt"] = manifest_of(sd)
        # views and shared storages
        base = torch.arange(60, dtype=torch.float32)
        views = collections.OrderedDict()
        views["base"] = base
        views["slice"] = base[10:25]
        views["t"] = base.view(6, 10).t()
        views["strided"] = base.view(6, 10)[::2, 1::3]
        views["expand"] = torch.tensor([1.0, 2.0]).view(2, 1).expand(2, 4)
        for fmt, kw in [("zip", {}), ("legacy", {"_use_new_zipfile_serialization": False})]:
            torch.save(views, os.path.join(d, "views_%s.pt" % fmt), **kw)
            man["views_%s.pt" % fmt] = manifest_of(views)
        # a real module's state dict, NVFlare layout, float64 counters as after aggregation
        m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
        msd = m.state_dict()
        torch.save({"model": msd, "train_conf": {"train": {"model": "Net"}}}, os.path.join(d, "module.pt"))
        man["module.pt"] = manifest_of(msd)
        json.dump(man, open(os.path.join(d, "manifest.json"), "w"), indent=1)
    elif cmd == "pickle-dumps":
        obj = collections.OrderedDict()
        obj["model"] = {"a": 1, "b": [1, 2, 3], "c": (None, True, False)}
        obj["n"] = [0, 255, 256, 65535, 65536, -1, -2 ** 31, 2 ** 31, 2 ** 40, -2 ** 70]
        obj["s"] = "h\u00e9llo"
        obj["d"] = {i: i for i in range(1001)}
        obj["d1000"] = {i: None for i in range(1000)}
        obj["l1001"] = list(range(1001))
        obj["l1"] = ["x"]
        obj["od1"] = collections.OrderedDict([("k", "x")])
        open(args[0], "wb").write(pickle.dumps(obj, protocol=2))
    elif cmd == "model-forward":
        import torch
        torch.set_num_threads(2)
        m = load_model(args[0])
        x = tload(args[1])["x"]
        if args[3] == "train":
            m.train()
        else:
            m.eval()
        with torch.no_grad():
            logits = m(x)
        out = collections.OrderedDict(logits=logits.contiguous())
        out["state"] = m.state_dict()
        torch.save(out, args[2])
    elif cmd == "model-step":
        import torch
        torch.set_num_threads(2)
        m = load_model(args[0])
        d = tload(args[1])
        x, y = d["x"], d["y"]
        lr = float(args[3])
        opt = torch.optim.Adam(m.parameters(), lr=lr)
        m.train()
        opt.zero_grad()
        logits = m(x)
        loss = torch.nn.CrossEntropyLoss()(logits, y)
        loss.backward()
        grads = collections.OrderedDict((n, p.grad.clone()) for n, p in m.named_parameters())
        opt.step()
        out = collections.OrderedDict(loss=loss.detach().reshape(1), logits=logits.detach().contiguous())
        out["state"] = m.state_dict()
        out["grads"] = grads
        torch.save(out, args[4])
    elif cmd == "transform":
        import torch
        from PIL import Image
        from torchvision import transforms
        from torchvision.datasets.folder import pil_loader
        tf = transforms.Compose([transforms.Resize((256, 256)), transforms.CenterCrop(224), transforms.ToTensor(),
                                 transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
        out = collections.OrderedDict()
        for i, path in enumerate(args[1:]):
            img = pil_loader(path)
            rgb = np.asarray(img, dtype=np.uint8).copy()
            resized = np.asarray(img.resize((256, 256), Image.BILINEAR), dtype=np.uint8).copy()
            out["rgb%d" % i] = torch.from_numpy(rgb)
            out["resized%d" % i] = torch.from_numpy(resized)
            out["tensor%d" % i] = tf(img).contiguous()
            # RandomRotation's operation at a fixed angle: rotate(NEAREST, expand=False, fill 0)
            rot = img.resize((256, 256), Image.BILINEAR).rotate(17.5, resample=Image.NEAREST, expand=False, fillcolor=0)
            out["rotated%d" % i] = torch.from_numpy(np.asarray(rot, dtype=np.uint8).copy())
        torch.save(out, args[0])
    elif cmd in ("shareable-check", "flcontext-check"):
        import logging
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "nvflare_standin"))
        from nvflare.apis.fl_context import FLContext
        from nvflare.apis.shareable import Shareable
        ours = pickle.loads(open(args[0], "rb").read())
        golden = pickle.loads(open(args[1], "rb").read())
        if cmd == "flcontext-check":
            if type(ours) is not FLContext:
                fail("not an FLContext: %r" % type(ours))
            if ours.__dict__["props"] != golden.__dict__["props"] or ours.__dict__["model"] is not None:
                fail("FLContext differs: %r vs %r" % (ours.__dict__, golden.__dict__))
            if not isinstance(ours.__dict__["logger"], logging.Logger):
                fail("logger is %r" % ours.__dict__["logger"])
            print("flcontext-check: equal")
            return
        if type(ours) is not Shareable:
            fail("not a Shareable: %r" % type(ours))
        if ours["__headers__"] != golden["__headers__"]:
            fail("headers differ: %r vs %r" % (ours["__headers__"], golden["__headers__"]))
        a, b = ours["DXO"], golden["DXO"]
        if a["kind"] != b["kind"] or (a["meta"] or {}) != (b["meta"] or {}) or list(a["data"]) != list(b["data"]):
            fail("DXO differs")
        for k in b["data"]:
            x, y = a["data"][k], b["data"][k]
            if not isinstance(y, np.ndarray):  # a metric: a plain Python number
                if type(x) is not type(y) or x != y:
                    fail("value %s differs: %r %r" % (k, x, y))
                continue
            if not isinstance(x, np.ndarray) or x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
                fail("array %s differs: %r %r" % (k, getattr(x, "dtype", x), y.dtype))
            x + 1  # a real, usable array
        print("shareable-check: equal, %d data entries" % len(b["data"]))
    else:
        fail("unknown command " + cmd)


if __name__ == "__main__":
    main()
