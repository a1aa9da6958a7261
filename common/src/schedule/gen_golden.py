#!/usr/bin/env python3
"""Golden table for `common/src/schedule/mod.rs`: fastai v1's one-cycle, stepped exactly as fastai steps it.

Regenerate (plain python3, no third-party packages) from the repository root with

    python3 common/src/schedule/gen_golden.py > common/src/schedule/golden.json

then run `cargo test --release -p ringtrain-common schedule`.

This is a transcription of fastai v1 (github.com/fastai/fastai1 @ 15bc02c6, i.e. release 1.0.61+):
  * fastai/callback.py        `annealing_cos`  (lines 366-369) and `class Scheduler` (lines 378-397)
  * fastai/callbacks/one_cycle.py  `OneCycleScheduler.on_train_begin` (lines 24-39) and
                                   `OneCycleScheduler.on_batch_end` (lines 45-54)
  * fastai/basic_train.py     `fit`: the optimiser holds the values set by `on_train_begin` for batch 0,
                              and `on_batch_end` runs after every training batch, so batch k uses the
                              values left by k scheduler ticks.
It is kept stateful on purpose (a counter per Scheduler, an index of the current phase) so the closed
form in Rust is checked against the original stepping logic, not against a second closed form.
`math.cos`/`math.pi` replace `np.cos`/`np.pi` (same IEEE double maths, no numpy needed).
"""
import json
import math
import sys


def annealing_cos(start, end, pct):
    "Cosine anneal from `start` to `end` as pct goes from 0.0 to 1.0."
    cos_out = math.cos(math.pi * pct) + 1
    return end + (start - end) / 2 * cos_out


class Scheduler:
    "fastai.callback.Scheduler: step from start to end over `n_iter` iterations with `func`."

    def __init__(self, vals, n_iter, func):
        self.start, self.end = vals
        self.n_iter = max(1, n_iter)
        self.func = func
        self.n = 0

    def step(self):
        self.n += 1
        return self.func(self.start, self.end, self.n / self.n_iter)

    @property
    def is_done(self):
        return self.n >= self.n_iter


class OneCycleScheduler:
    """fastai.callbacks.one_cycle.OneCycleScheduler without the Learner: `lr`/`mom` stand for the
    optimiser's current values (fastai's `self.opt.lr`, `self.opt.mom`)."""

    def __init__(self, lr_max, n, moms=(0.95, 0.85), div_factor=25.0, pct_start=0.3, final_div=None):
        self.lr_max, self.div_factor, self.pct_start, self.final_div = lr_max, div_factor, pct_start, final_div
        if self.final_div is None:
            self.final_div = div_factor * 1e4
        self.moms = tuple(moms)
        # on_train_begin; n = len(train_dl) * tot_epochs
        a1 = int(n * self.pct_start)
        a2 = n - a1
        self.phases = ((a1, annealing_cos), (a2, annealing_cos))
        low_lr = self.lr_max / self.div_factor
        self.lr_scheds = self.steps((low_lr, self.lr_max), (self.lr_max, self.lr_max / self.final_div))
        self.mom_scheds = self.steps(self.moms, (self.moms[1], self.moms[0]))
        self.lr, self.mom = self.lr_scheds[0].start, self.mom_scheds[0].start
        self.idx_s = 0

    def steps(self, *steps_cfg):
        return [Scheduler(step, n_iter, func=func) for (step, (n_iter, func)) in zip(steps_cfg, self.phases)]

    def on_batch_end(self, train=True):
        if train:
            if self.idx_s >= len(self.lr_scheds):
                return {"stop_training": True, "stop_epoch": True}
            self.lr = self.lr_scheds[self.idx_s].step()
            self.mom = self.mom_scheds[self.idx_s].step()
            if self.lr_scheds[self.idx_s].is_done:
                self.idx_s += 1


# (name, config in OneCycleConfig's field names, extra steps past the end to record)
CASES = [
    ("total10_default", dict(max_lr=0.01, total_steps=10)),
    ("total100_lr0.05", dict(max_lr=0.05, total_steps=100)),
    ("lesson7_12x468", dict(max_lr=0.05, total_steps=12 * 468)),
    # int(3 * 0.3) == 0: phase 1 is a single tick straight to max_lr after batch 0.
    ("warmup0_total3", dict(max_lr=0.1, total_steps=3)),
    ("total1", dict(max_lr=0.1, total_steps=1)),
    # 100 * 0.29 == 28.999999999999996 in doubles, so a1 == 28, not 29.
    ("float_trunc_pct0.29", dict(max_lr=0.1, total_steps=100, pct_start=0.29)),
    ("custom", dict(max_lr=3e-3, total_steps=37, pct_start=0.25, div_factor=10.0,
                    final_div_factor=100.0, moms=[0.9, 0.8])),
]
EXTRA = 3  # steps past total_steps: fastai stops training there and the optimiser keeps its last values


def full(cfg):
    c = dict(pct_start=0.3, div_factor=25.0, final_div_factor=1e4, moms=[0.95, 0.85])
    c.update(cfg)
    return c


def run(cfg):
    sched = OneCycleScheduler(cfg["max_lr"], cfg["total_steps"], moms=cfg["moms"], div_factor=cfg["div_factor"],
                              pct_start=cfg["pct_start"], final_div=cfg["div_factor"] * cfg["final_div_factor"])
    points = []
    for _ in range(cfg["total_steps"] + EXTRA):
        points.append([sched.lr, sched.mom])  # what batch `step` trains with
        sched.on_batch_end(True)
    return points


def main():
    out = {
        "source": "common/src/schedule/gen_golden.py (transcribes fastai v1 Scheduler/OneCycleScheduler)",
        "extra_steps": EXTRA,
        "cases": [],
    }
    for name, cfg in CASES:
        cfg = full(cfg)
        out["cases"].append({"name": name, "config": cfg, "points": run(cfg)})
    json.dump(out, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
