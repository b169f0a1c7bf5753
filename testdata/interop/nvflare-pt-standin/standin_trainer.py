"""A stand-in for the pneumonia trainer on NVFlare's own clients, for checking the server side of
testdata/interop/nvflare-pt-server.sh without flarego: an NVFlare Executor that answers

  train         the task's WEIGHTS with fresh random arrays of the same names, shapes and dtypes,
                meta NUM_STEPS_CURRENT_ROUND = `num_steps` (per site, so the weighting shows);
  validate      METRICS {"val_acc": 0.5};
  submit_model  the weights it last sent.

Every train answer is recorded under `dump_dir` as round-R/SITE.npz with round-R/SITE.json,
{"site", "round", "num_steps", "weights"}, which nvflare_pt_compare.py reads.
"""
import json
import os

import numpy as np

from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.shareable import Shareable, make_reply


class StandinTrainer(Executor):
    def __init__(self, dump_dir="", num_steps=None, seed=0):
        super().__init__()
        self.dump_dir = dump_dir
        self.num_steps = num_steps or {}
        self.seed = seed
        self.last = None

    def _steps(self, site):
        if site in self.num_steps:
            return int(self.num_steps[site])
        digits = "".join(c for c in site if c.isdigit())
        return 1 + 2 * int(digits or 1)  # site-1: 3, site-2: 5

    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        site = fl_ctx.get_identity_name()
        try:
            if task_name == "train":
                return self._train(site, shareable)
            if task_name == "validate":
                return DXO(data_kind=DataKind.METRICS, data={"val_acc": 0.5}).to_shareable()
            if task_name == "submit_model":
                if self.last is None:
                    return make_reply(ReturnCode.EMPTY_RESULT)
                return DXO(data_kind=DataKind.WEIGHTS, data=self.last).to_shareable()
            return make_reply(ReturnCode.TASK_UNKNOWN)
        except Exception as e:
            self.log_exception(fl_ctx, f"stand-in trainer: {task_name}: {e}")
            return make_reply(ReturnCode.EXECUTION_EXCEPTION)

    def _train(self, site, shareable):
        try:
            dxo = from_shareable(shareable)
        except Exception:
            return make_reply(ReturnCode.BAD_TASK_DATA)
        if dxo.data_kind != DataKind.WEIGHTS or not isinstance(dxo.data, dict):
            return make_reply(ReturnCode.BAD_TASK_DATA)
        rnd = int(shareable.get_header("current_round", 0) or 0)
        digits = "".join(c for c in site if c.isdigit())
        rng = np.random.default_rng([self.seed, rnd, int(digits or 0)])
        out = {}
        for name, v in dxo.data.items():
            v = np.asarray(v)
            if np.issubdtype(v.dtype, np.floating):
                out[name] = (v + rng.normal(0.0, 0.05, size=v.shape)).astype(v.dtype)
            else:
                out[name] = rng.integers(0, 100, size=v.shape).astype(v.dtype)
        steps = self._steps(site)
        self.last = out
        if self.dump_dir:
            d = os.path.join(self.dump_dir, f"round-{rnd}")
            os.makedirs(d, exist_ok=True)
            np.savez(os.path.join(d, f"{site}.npz"), **out)
            with open(os.path.join(d, f"{site}.json"), "w") as f:
                json.dump({"site": site, "round": rnd, "num_steps": steps, "weights": f"{site}.npz"}, f)
        result = DXO(data_kind=DataKind.WEIGHTS, data=out, meta={MetaKey.NUM_STEPS_CURRENT_ROUND: steps})
        return result.to_shareable()
