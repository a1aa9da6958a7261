#!/usr/bin/env python3
"""Multi-process PyTorch reference for `ringtrain launch --workers N`: fast.ai lesson 7's MNIST CNN
trained data-parallel with torch.distributed + DistributedDataParallel, written the way a competent
PyTorch user would write it. Everything shared with the single-process reference is imported from
bench/torch_ref.py (data loading, augmentation, models, schedule, optimiser, validation).

Run it with torchrun (one process per rank; gloo on CPU, nccl with --device cuda):

    PY=$HOME/.cache/ringtrain/torch-2.11.0/bin/python
    $PY -m torch.distributed.run --standalone --nproc_per_node 2 bench/ddp_ref.py \
        --model resnet --epochs 1 --json target/bench/ddp_ref.json

What it matches (as bench/torch_ref.py; see its header for the fastai v1 sources):
  * data: `rand_pad(padding=3, size=28, mode='zeros')` on training images only, then normalise with
    the mean/std of all training pixels in [0,1] (every rank computes them from the whole set);
    shuffle every epoch; the last partial batch is dropped.
  * models: the lesson's `nn.Sequential`s (`--model resnet|basic`, `--bn-init zero|plain`), built
    by torch_ref.resnet / torch_ref.basic from the same seed on every rank (DDP also broadcasts
    rank 0's parameters and buffers when it wraps the model).
  * optimiser: AdamW(betas=(0.9, 0.99), eps=1e-8, weight_decay=1e-2) over every parameter.
  * schedule: fastai `fit_one_cycle` via torch_ref.one_cycle_at, lr and beta1 set every step.
  * table (rank 0): epoch, train_loss, valid_loss, accuracy, time. train_loss is fastai's smoothed
    loss (beta 0.98, debiased, carried across epochs) of the per-step loss averaged over ranks
    (each rank keeps its step losses on the device; they are all-reduced once per epoch, not per
    step); valid_loss and accuracy are exact over all validation images.

Data-parallel specifics:
  * `--batch-size` is the GLOBAL batch (default 128, the lesson's); each rank runs
    batch_size / world_size images per step (an error if it does not divide). DDP averages the
    gradients, so one step equals one single-process step on the global batch, except for BatchNorm.
  * sharding: torch's DistributedSampler(shuffle=True, drop_last=True, seed=--seed) over the
    training indices with set_epoch(epoch): one permutation seeded by seed + epoch, identical on all
    ranks; rank r takes positions r::world of it, trimmed so every rank has len(train) // world;
    steps per epoch = (len(train) // world) // per_rank_batch. Crop offsets come from a per-rank
    generator seeded by (seed, rank).
  * BatchNorm: plain nn.BatchNorm2d (no SyncBatchNorm), so batch statistics are per rank over the
    per-rank batch. DDP's default broadcast_buffers=True copies rank 0's running mean/var to all
    ranks before every training forward; that is the intended behaviour here. Before validation
    rank 0's buffers are broadcast once more (each rank's last forward updated its own copy), so the
    validation result is rank 0's model evaluated on all images.
  * validation: each rank evaluates its slice valid[rank::world] with the unwrapped module (no
    collectives inside the forward, so unequal slices are fine) and (loss_sum, correct, count) are
    all-reduced.

What is measured: each epoch is timed between barrier-synchronised clocks (CUDA synchronised first),
so epoch_seconds covers the slowest rank, including the gradient all-reduces. Throughput =
global training images (per-rank batch x world x steps) / seconds inside training steps; every
step is counted by default (`--warmup-steps 0`; with K > 0 the clock starts at a barrier before
step K, the first K steps are still trained on and still in epoch_seconds). Validation, the
per-epoch loss all-reduce, data loading and process-group start-up are excluded. `--threads T`
sets torch.set_num_threads per process (default max(1, cores // world), cores = this process's CPU
affinity). Rank 0 writes `--json OUT`.
"""
import argparse
import json
import os
import sys
import time
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data.distributed import DistributedSampler

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_ref  # noqa: E402  (same folder)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--idx", default="/work/shared/data/mnist", help="folder with the four MNIST idx(.gz) files")
    p.add_argument("--model", choices=["resnet", "basic"], default="resnet")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cpu: gloo backend; cuda: nccl, one GPU per rank")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads per process (default: max(1, cores // world))")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--max-lr", type=float, default=None, help="default: 0.05 resnet, 0.1 basic (the lesson's)")
    p.add_argument("--batch-size", type=int, default=128, help="GLOBAL batch, split evenly across ranks")
    p.add_argument("--valid-batch-size", type=int, default=1024, help="per rank")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit-train", type=int, default=0, help="use only the first N training images")
    p.add_argument("--limit-valid", type=int, default=0, help="use only the first N validation images")
    p.add_argument("--bn-init", choices=["zero", "plain"], default="zero", help="resnet BatchNorm init (see torch_ref.py)")
    p.add_argument("--optimizer-impl", choices=["auto", "fused", "foreach", "for-loop"], default="auto",
                   help="torch AdamW kernel; auto = fused on cuda, torch's default on cpu")
    p.add_argument("--warmup-steps", type=int, default=0, help="first steps left out of the throughput (default 0: all counted)")
    p.add_argument("--json", default=None, help="rank 0 writes the summary here")
    return p.parse_args()


def cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def barrier_clock(device):
    """Wait for queued device work and for every rank, then read the clock."""
    torch_ref.sync(device)
    dist.barrier()
    return time.perf_counter()


def main():
    args = parse_args()
    t_start = time.perf_counter()
    if "RANK" not in os.environ:
        raise SystemExit("launch with torchrun: python -m torch.distributed.run --standalone --nproc_per_node N bench/ddp_ref.py ...")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if args.batch_size % world:
        raise SystemExit(f"--batch-size {args.batch_size} does not split evenly over {world} ranks")
    bs = args.batch_size // world  # per rank
    max_lr = args.max_lr if args.max_lr is not None else (0.05 if args.model == "resnet" else 0.1)
    torch.set_num_threads(args.threads or max(1, cores() // world))

    if args.device == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        backend = "nccl"
        dist.init_process_group(backend, device_id=device, timeout=timedelta(minutes=10))
    else:
        device = torch.device("cpu")
        backend = "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=10))
    assert dist.get_rank() == rank and dist.get_world_size() == world
    is_main = rank == 0

    torch.manual_seed(args.seed)  # same initial weights on every rank (DDP broadcasts rank 0's anyway)
    aug_seed = int(np.random.SeedSequence([args.seed, rank]).generate_state(1)[0])
    gen = torch.Generator(device=device).manual_seed(aug_seed)

    (xt, yt), (xv, yv) = torch_ref.load_mnist(args.idx, args.limit_train, args.limit_valid)
    pixels = xt.double().div_(255.0)
    mean, std = pixels.mean().item(), pixels.std(unbiased=False).item()
    del pixels
    augment = torch_ref.Augment(xt, mean, std, device)
    yt = yt.to(device)
    n_valid = len(xv)
    xv = ((xv[rank::world].float().unsqueeze(1) / 255.0 - mean) / std).to(device)  # this rank's slice
    yv = yv[rank::world].to(device)

    sampler = DistributedSampler(range(len(xt)), num_replicas=world, rank=rank, shuffle=True,
                                 seed=args.seed, drop_last=True)
    per_rank = len(sampler)  # len(train) // world
    steps_per_epoch = per_rank // bs  # drop_last
    if steps_per_epoch == 0:
        raise SystemExit(f"{per_rank} training images per rank make no full batch of {bs}")
    total_steps = steps_per_epoch * args.epochs

    module = torch_ref.resnet(args.bn_init) if args.model == "resnet" else torch_ref.basic()
    n_params = sum(p.numel() for p in module.parameters())
    assert n_params == torch_ref.PARAMS[args.model], f"{args.model}: {n_params} parameters, lesson 7 has {torch_ref.PARAMS[args.model]}"
    module = module.to(device)
    model = DDP(module, device_ids=[local_rank] if device.type == "cuda" else None)  # broadcast_buffers=True
    opt = torch_ref.make_optimizer(module, max_lr / 25.0, args.optimizer_impl, device)

    if is_main:
        print(f"torch {torch.__version__} | DDP {backend} x{world} | {args.model} ({n_params:,} params) | device {device} | "
              f"threads/rank {torch.get_num_threads()} | train {len(xt)} ({steps_per_epoch} steps/epoch, "
              f"{per_rank} images/rank) | valid {n_valid} | max_lr {max_lr} | batch {args.batch_size} = {world} x {bs} | "
              f"mean {mean:.4f} std {std:.4f}")
        print(f"{'epoch':<9} {'train_loss':<11} {'valid_loss':<11} {'accuracy':<9} time", flush=True)

    smooth_avg, smooth_n, beta = 0.0, 0, 0.98
    epoch_seconds, timed_seconds, timed_images = [], 0.0, 0
    valid_loss = accuracy = float("nan")
    step = 0
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        perm = torch.tensor(list(sampler), dtype=torch.int64, device=device)
        offsets = torch.randint(0, 2 * torch_ref.PAD + 1, (steps_per_epoch * bs, 2), generator=gen, device=device)
        losses = torch.empty(steps_per_epoch, device=device)
        model.train()
        t0 = barrier_clock(device)
        t_mark = t0 if args.warmup_steps <= step else None
        for i in range(steps_per_epoch):
            if step == args.warmup_steps and t_mark is None:
                t_mark = barrier_clock(device)
            lr, beta1 = torch_ref.one_cycle_at(step, total_steps, max_lr)
            for group in opt.param_groups:
                group["lr"] = lr
                group["betas"] = (beta1, 0.99)
            idx = perm[i * bs : (i + 1) * bs]
            xb = augment(idx, offsets[i * bs : (i + 1) * bs])
            loss = F.cross_entropy(model(xb), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()  # DDP all-reduces (averages) the gradients here
            opt.step()
            losses[i] = loss.detach()
            if step >= args.warmup_steps:
                timed_images += bs * world
            step += 1
        t1 = barrier_clock(device)
        epoch_seconds.append(t1 - t0)
        if t_mark is not None:
            timed_seconds += t1 - t_mark

        dist.all_reduce(losses)  # once per epoch: mean over ranks of each step's loss
        losses /= world
        for b in module.buffers():  # validate rank 0's BN running stats on every slice
            dist.broadcast(b, src=0)
        if len(yv):
            mean_loss, acc = torch_ref.validate(module, xv, yv, args.valid_batch_size)
            sums = [mean_loss * len(yv), round(acc * len(yv)), len(yv)]
        else:
            sums = [0.0, 0, 0]
        sums = torch.tensor(sums, dtype=torch.float64, device=device)
        dist.all_reduce(sums)
        valid_loss, accuracy = (sums[0] / sums[2]).item(), (sums[1] / sums[2]).item()
        if is_main:
            for v in losses.tolist():  # fastai SmoothenValue, carried across epochs
                smooth_n += 1
                smooth_avg = beta * smooth_avg + (1 - beta) * v
            train_loss = smooth_avg / (1 - beta**smooth_n)
            print(f"{epoch:<9d} {train_loss:<11.6f} {valid_loss:<11.6f} {accuracy:<9.6f} {torch_ref.fmt_time(t1 - t0)}", flush=True)

    total_seconds = time.perf_counter() - t_start
    ips = timed_images / timed_seconds if timed_seconds > 0 else float("nan")
    if is_main:
        print(f"train throughput {ips:,.0f} images/s global ({timed_images} images in {timed_seconds:.2f} s, "
              f"{world} ranks x {torch.get_num_threads()} threads, first {args.warmup_steps} steps excluded) | "
              f"final accuracy {accuracy:.4f} | total {total_seconds:.1f} s")
    if is_main and args.json:
        summary = {
            "model": args.model,
            "world_size": world,
            "threads_per_rank": torch.get_num_threads(),
            "epochs": args.epochs,
            "global_batch": args.batch_size,
            "train_images": timed_images,
            "train_seconds": timed_seconds,
            "train_images_per_s": ips,
            "epoch_seconds": epoch_seconds,
            "valid_accuracy": accuracy,
            "valid_loss": valid_loss,
            "torch_version": torch.__version__,
            "backend": backend,
            "device": str(device) if device.type == "cpu" else f"cuda:{torch.cuda.get_device_name(device)}",
            "per_rank_batch": bs,
            "steps": total_steps,
            "steps_per_epoch": steps_per_epoch,
            "warmup_steps": args.warmup_steps,
            "max_lr": max_lr,
            "bn_init": args.bn_init if args.model == "resnet" else "plain",
            "seed": args.seed,
            "total_seconds": total_seconds,
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
            f.write("\n")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
