#!/usr/bin/env python3
"""Single-process PyTorch reference for ringtrain's benchmarks: fast.ai lesson 7's MNIST CNN, trained
with the lesson's recipe, written the way a competent PyTorch user would write it.

Dataset: MNIST from the four idx(.gz) files, held in memory (60,000 train / 10,000 valid).
Expect ~99.5% validation accuracy for `--model resnet --epochs 12 --max-lr 0.05` (the lesson reports
99.2-99.6%) and ~99% for `--model basic --epochs 3 --max-lr 0.1`.

Run with the project's venv (torch 2.11 + numpy, nothing else):

    $HOME/.cache/ringtrain/torch-2.11.0/bin/python bench/torch_ref.py --model resnet --epochs 12 \
        --device cuda --json target/bench/torch_ref.json

What it matches, and where from (fastai v1 = github.com/fastai/fastai1, release 1.0.61):
  * data: `rand_pad(padding=3, size=28, mode='zeros')` on training images only (zero-pad 3 px, then a
    28x28 crop at offsets int(7*U[0,1)) per axis, fastai/vision/transform.py `_crop_default`), then
    normalise; shuffle every epoch; batch 128; the last partial training batch is dropped
    (fastai/basic_data.py `DataBunch.create`: drop_last=shuffle). Normalisation stats are the
    mean/std of all training pixels in [0,1] (the lesson's `.normalize()` takes them from one batch).
  * models: the lesson's `nn.Sequential`s; `conv_layer` = conv(3x3, no bias, kaiming_normal_) ->
    ReLU -> BatchNorm (fastai/layers.py); `res_block(nf)` = x + conv_layer(conv_layer(x)).
    BatchNorm init (`--bn-init`): `zero` (default) = fastai's `batchnorm_2d` (weight 1, bias 1e-3,
    and weight 0 for the second BN of each res_block), as conv_layer used it in fastai 1.0.33-1.0.34;
    `plain` = PyTorch's default (weight 1, bias 0 everywhere), which is what conv_layer does from
    1.0.35 on (it appends a bare nn.BatchNorm2d; NormType.BatchZero then has no effect).
  * optimiser: fastai's default `AdamW = partial(optim.Adam, betas=(0.9, 0.99))` with wd=1e-2,
    true_wd=True, bn_wd=True == torch.optim.AdamW(betas=(0.9, 0.99), eps=1e-8, weight_decay=1e-2)
    over every parameter (decoupled decay p *= 1 - lr*wd before the Adam update, as fastai does).
  * schedule: `fit_one_cycle` (fastai/callbacks/one_cycle.py + callback.py `Scheduler`): see
    `one_cycle_at`, the same closed form as ringtrain's `common/src/schedule/mod.rs`.
  * table: `train_loss` is fastai's smoothed loss (beta 0.98, debiased, carried across epochs, value
    after the epoch's last batch); `valid_loss` the mean over all validation images.

Throughput = training images / wall seconds inside training steps (index, augment, forward,
backward, optimiser), CUDA synchronised at the clock reads; validation and start-up are excluded,
and so are the first `--warmup-steps` steps (CUDA/cuDNN lazy init, cudnn.benchmark autotuning,
torch.compile), which are still trained on and still counted in `epoch_seconds`.
"""
import argparse
import gzip
import json
import math
import os
import struct
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PAD = 3
SIZE = 28


# ---------------------------------------------------------------------------------------- data
def read_idx(path):
    """An idx file (optionally gzipped) as a uint8 numpy array of its declared shape."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not a uint8 idx file (magic {raw[:4].hex()})")
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    arr = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != math.prod(dims):
        raise ValueError(f"{path}: {arr.size} bytes of data, header says {dims}")
    return arr.reshape(dims)


def find_idx(root, stem):
    for name in (stem + ".gz", stem):
        path = os.path.join(root, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"{stem}(.gz) not found in {root}")


def load_mnist(root, limit_train, limit_valid):
    def pair(images, labels, limit):
        x = read_idx(find_idx(root, images))
        y = read_idx(find_idx(root, labels))
        if len(x) != len(y):
            raise ValueError(f"{images}: {len(x)} images but {len(y)} labels")
        if limit:
            x, y = x[:limit], y[:limit]
        return torch.from_numpy(x.copy()), torch.from_numpy(y.astype(np.int64))

    train = pair("train-images-idx3-ubyte", "train-labels-idx1-ubyte", limit_train)
    valid = pair("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", limit_valid)
    return train, valid


class Augment:
    """fastai `rand_pad(3, 28, mode='zeros')` + normalise, on whole batches on the training device.

    The training set is zero-padded once to 34x34 (uint8); a batch is one advanced-indexing gather
    of 28x28 windows at per-image offsets in 0..=6, converted to float and normalised in place.
    """

    def __init__(self, images_u8, mean, std, device):
        self.padded = F.pad(images_u8, (PAD, PAD, PAD, PAD)).to(device)  # [N, 34, 34] uint8
        self.ar = torch.arange(SIZE, device=device)
        self.scale = 1.0 / (255.0 * std)
        self.shift = mean / std

    def __call__(self, idx, offsets):
        rows = (offsets[:, 0, None] + self.ar)[:, :, None]  # [B, 28, 1]
        cols = (offsets[:, 1, None] + self.ar)[:, None, :]  # [B, 1, 28]
        crops = self.padded[idx[:, None, None], rows, cols]  # [B, 28, 28] uint8
        return crops.unsqueeze(1).float().mul_(self.scale).sub_(self.shift)


# -------------------------------------------------------------------------------------- models
def conv_layer(ni, nf, stride=1, zero_bn=False, bn_init="zero"):
    """fastai v1 `conv_layer`: Conv2d(3x3, bias=False, kaiming_normal_) -> ReLU -> BatchNorm2d."""
    conv = nn.Conv2d(ni, nf, kernel_size=3, stride=stride, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight)
    bn = nn.BatchNorm2d(nf)
    if bn_init == "zero":
        with torch.no_grad():
            bn.bias.fill_(1e-3)
            bn.weight.fill_(0.0 if zero_bn else 1.0)
    return nn.Sequential(conv, nn.ReLU(inplace=True), bn)


class ResBlock(nn.Module):
    """fastai v1 `res_block(nf)`: x + conv_layer(conv_layer(x)) (SequentialEx + MergeLayer)."""

    def __init__(self, nf, bn_init):
        super().__init__()
        self.body = nn.Sequential(
            conv_layer(nf, nf, bn_init=bn_init),
            conv_layer(nf, nf, zero_bn=True, bn_init=bn_init),
        )

    def forward(self, x):
        return x + self.body(x)


def resnet(bn_init):
    """Lesson 7's final model (the `conv_and_res` version, spelled out)."""
    def conv2(ni, nf):
        return conv_layer(ni, nf, stride=2, bn_init=bn_init)

    return nn.Sequential(
        conv2(1, 8), ResBlock(8, bn_init),
        conv2(8, 16), ResBlock(16, bn_init),
        conv2(16, 32), ResBlock(32, bn_init),
        conv2(32, 16), ResBlock(16, bn_init),
        conv2(16, 10),
        nn.Flatten(),
    )


def basic():
    """Lesson 7's first model: PyTorch-default conv (with bias) -> BN -> ReLU, all stride 2."""
    def conv(ni, nf):
        return nn.Conv2d(ni, nf, kernel_size=3, stride=2, padding=1)

    return nn.Sequential(
        conv(1, 8), nn.BatchNorm2d(8), nn.ReLU(),
        conv(8, 16), nn.BatchNorm2d(16), nn.ReLU(),
        conv(16, 32), nn.BatchNorm2d(32), nn.ReLU(),
        conv(32, 16), nn.BatchNorm2d(16), nn.ReLU(),
        conv(16, 10), nn.BatchNorm2d(10),
        nn.Flatten(),
    )


PARAMS = {"resnet": 41_132, "basic": 12_126}


# ------------------------------------------------------------------------------------ schedule
def annealing_cos(start, end, pct):
    return end + (start - end) / 2 * (math.cos(math.pi * pct) + 1)


def one_cycle_at(step, total, max_lr, pct_start=0.3, div=25.0, final_div=1e4, moms=(0.95, 0.85)):
    """(lr, beta1) for 0-based batch `step` of fastai v1's fit_one_cycle; see common/src/schedule."""
    a1 = int(total * pct_start)
    n1, n2 = max(1, a1), max(1, total - a1)
    low, floor = max_lr / div, max_lr / (div * final_div)
    if step == 0:
        return low, moms[0]
    if step <= n1:
        pct = step / n1
        return annealing_cos(low, max_lr, pct), annealing_cos(moms[0], moms[1], pct)
    pct = min(step - n1, n2) / n2
    return annealing_cos(max_lr, floor, pct), annealing_cos(moms[1], moms[0], pct)


# ---------------------------------------------------------------------------------------- main
def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--idx", default="/work/shared/data/mnist", help="folder with the four MNIST idx(.gz) files")
    p.add_argument("--model", choices=["resnet", "basic"], default="resnet")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--max-lr", type=float, default=None, help="default: 0.05 resnet, 0.1 basic (the lesson's)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--valid-batch-size", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit-train", type=int, default=0, help="use only the first N training images")
    p.add_argument("--limit-valid", type=int, default=0, help="use only the first N validation images")
    p.add_argument("--bn-init", choices=["zero", "plain"], default="zero", help="resnet BatchNorm init (see header)")
    p.add_argument("--optimizer-impl", choices=["auto", "fused", "foreach", "for-loop"], default="auto",
                   help="torch AdamW kernel; auto = fused on cuda, torch's default on cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--warmup-steps", type=int, default=5, help="first steps left out of the throughput")
    p.add_argument("--json", default=None, help="write the summary here")
    return p.parse_args()


def make_optimizer(model, lr, impl, device):
    kw = dict(lr=lr, betas=(0.9, 0.99), eps=1e-8, weight_decay=1e-2)
    if impl == "auto":
        impl = "fused" if device.type == "cuda" else "default"
    if impl == "fused":
        kw["fused"] = True
    elif impl == "foreach":
        kw["foreach"] = True
    elif impl == "for-loop":
        kw["foreach"] = False
    return torch.optim.AdamW(model.parameters(), **kw)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def validate(model, x, y, batch_size):
    model.eval()
    loss_sum = torch.zeros((), device=x.device, dtype=torch.float64)
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    for i in range(0, len(x), batch_size):
        out = model(x[i : i + batch_size])
        yb = y[i : i + batch_size]
        loss_sum += F.cross_entropy(out, yb, reduction="sum").double()
        correct += (out.argmax(dim=1) == yb).sum()
    return loss_sum.item() / len(x), correct.item() / len(x)


def fmt_time(s):
    return f"{int(s) // 60:02d}:{int(s) % 60:02d}"


def main():
    args = parse_args()
    t_start = time.perf_counter()
    max_lr = args.max_lr if args.max_lr is not None else (0.05 if args.model == "resnet" else 0.1)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(args.seed)
    gen = torch.Generator(device=device).manual_seed(args.seed)

    (xt, yt), (xv, yv) = load_mnist(args.idx, args.limit_train, args.limit_valid)
    pixels = xt.double().div_(255.0)
    mean, std = pixels.mean().item(), pixels.std(unbiased=False).item()
    del pixels
    augment = Augment(xt, mean, std, device)
    yt = yt.to(device)
    xv = ((xv.float().unsqueeze(1) / 255.0 - mean) / std).to(device)
    yv = yv.to(device)

    bs = args.batch_size
    steps_per_epoch = len(xt) // bs  # drop_last
    if steps_per_epoch == 0:
        raise SystemExit(f"{len(xt)} training images make no full batch of {bs}")
    total_steps = steps_per_epoch * args.epochs

    model = resnet(args.bn_init) if args.model == "resnet" else basic()
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == PARAMS[args.model], f"{args.model}: {n_params} parameters, lesson 7 has {PARAMS[args.model]}"
    model = model.to(device)
    opt = make_optimizer(model, max_lr / 25.0, args.optimizer_impl, device)
    fwd = torch.compile(model) if args.compile else model

    print(f"torch {torch.__version__} | {args.model} ({n_params:,} params) | device {device} | "
          f"threads {torch.get_num_threads()} | train {len(xt)} ({steps_per_epoch} steps/epoch) | valid {len(xv)} | "
          f"max_lr {max_lr} | bs {bs} | mean {mean:.4f} std {std:.4f}")
    print(f"{'epoch':<9} {'train_loss':<11} {'valid_loss':<11} {'accuracy':<9} time")

    smooth_avg, smooth_n, beta = 0.0, 0, 0.98
    epoch_seconds, timed_seconds, timed_images = [], 0.0, 0
    valid_loss = accuracy = float("nan")
    step = 0
    for epoch in range(args.epochs):
        fwd.train()
        sync(device)
        t0 = time.perf_counter()
        t_mark = t0 if args.warmup_steps <= step else None
        perm = torch.randperm(len(xt), generator=gen, device=device)
        offsets = torch.randint(0, 2 * PAD + 1, (steps_per_epoch * bs, 2), generator=gen, device=device)
        losses = torch.empty(steps_per_epoch, device=device)
        for i in range(steps_per_epoch):
            if step == args.warmup_steps and t_mark is None:
                sync(device)
                t_mark = time.perf_counter()
            lr, beta1 = one_cycle_at(step, total_steps, max_lr)
            for group in opt.param_groups:
                group["lr"] = lr
                group["betas"] = (beta1, 0.99)
            idx = perm[i * bs : (i + 1) * bs]
            xb = augment(idx, offsets[i * bs : (i + 1) * bs])
            loss = F.cross_entropy(fwd(xb), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses[i] = loss.detach()
            if step >= args.warmup_steps:
                timed_images += bs
            step += 1
        sync(device)
        t1 = time.perf_counter()
        epoch_seconds.append(t1 - t0)
        if t_mark is not None:
            timed_seconds += t1 - t_mark

        for v in losses.tolist():  # fastai SmoothenValue, carried across epochs
            smooth_n += 1
            smooth_avg = beta * smooth_avg + (1 - beta) * v
        train_loss = smooth_avg / (1 - beta**smooth_n)
        valid_loss, accuracy = validate(fwd, xv, yv, args.valid_batch_size)
        print(f"{epoch:<9d} {train_loss:<11.6f} {valid_loss:<11.6f} {accuracy:<9.6f} {fmt_time(t1 - t0)}", flush=True)

    total_seconds = time.perf_counter() - t_start
    ips = timed_images / timed_seconds if timed_seconds > 0 else float("nan")
    print(f"train throughput {ips:,.0f} images/s ({timed_images} images in {timed_seconds:.2f} s, "
          f"first {args.warmup_steps} steps excluded) | final accuracy {accuracy:.4f} | total {total_seconds:.1f} s")

    if args.json:
        summary = {
            "model": args.model,
            "device": str(device) if device.type == "cpu" else f"cuda:{torch.cuda.get_device_name(device)}",
            "threads": torch.get_num_threads(),
            "epochs": args.epochs,
            "train_images": timed_images,
            "train_seconds": timed_seconds,
            "train_images_per_s": ips,
            "valid_accuracy": accuracy,
            "valid_loss": valid_loss,
            "epoch_seconds": epoch_seconds,
            "torch_version": torch.__version__,
            "total_seconds": total_seconds,
            "max_lr": max_lr,
            "batch_size": bs,
            "steps": total_steps,
            "warmup_steps": args.warmup_steps,
            "bn_init": args.bn_init if args.model == "resnet" else "plain",
            "compile": args.compile,
            "seed": args.seed,
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
