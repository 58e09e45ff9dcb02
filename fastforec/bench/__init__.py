"""`fastforec bench --what data|kernels|step|e2e|gpu-check`: throughput benchmarks, each in its
own module of this package. Each prints a table and can write JSON."""

from __future__ import annotations

import argparse

from fastforec.config import add_override_argument

NAME = "bench"
HELP = "throughput benchmarks (side by side, as ratios)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--what", required=True, choices=["data", "kernels", "step", "e2e", "gpu-check"],
                   help="data: samples per second of the DALI training pipeline against an equal-work "
                        "PIL/torchvision DataLoader and DALI decode-only, same shards and threads, no model; "
                        "kernels: each fused loss kernel (Triton on CUDA, chunked PyTorch on the CPU) against the "
                        "naive PyTorch composition, time and peak memory; step: the full training step (forward, "
                        "backward, optimizer, EMA) on batches already in memory, with FLOPs and utilisation "
                        "(--baseline: against the research repos' plain loop); e2e: the same step fed by the DALI "
                        "pipeline from shards, against in-memory batches (what the data costs the step); "
                        "gpu-check: the GPU paths (precision, SyncBN, kernels) checked on a real GPU, pass/fail")
    p.add_argument("--config", help="run config (JSON); needed for data, step, e2e")
    p.add_argument("--data", help="shard directory (overrides data.root)")
    p.add_argument("--crop", type=int, help="crop size (overrides data.crop_size)")
    p.add_argument("--threads", type=int, help="DALI threads / DataLoader workers")
    p.add_argument("--batches", type=int, default=None, help="timed batches per contender (step: 0 = count FLOPs only)")
    p.add_argument("--json", dest="json_out", help="write the results as JSON to this file")
    add_override_argument(p, help="override a config entry of --config (repeatable), e.g. --set data.batch_size=8")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak (else measured)")
    p.add_argument("--device", choices=["cpu", "gpu"], default=None,
                   help="data: DALI backend to benchmark (default cpu; gpu needs CUDA)")
    p.add_argument("--synthetic", choices=["scenes", "textured"], default=None,
                   help="data: what an empty or new --data directory is filled with: dataprep's synthetic "
                        "VOC scenes (default) or photo-like textured JPEGs")
    p.add_argument("--baseline", action="store_true",
                   help="step: also time the same method as the research repos' loops run it (fp32, torch.optim, "
                        "no DeepSpeed, no fused losses, Python EMA), interleaved, and report ratio_vs_baseline")
    p.add_argument("--dry-run", action="store_true", help="gpu-check: the same sections on the CPU, small shapes")
    p.add_argument("--wheels", help="gpu-check: wheels to unpack when deepspeed & co. are missing "
                                    "(default build/offline_wheels, see tools/build_offline_wheels.sh)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    # lazy: each benchmark pulls in different heavy dependencies (DALI, Triton, DeepSpeed); keeps
    # `fastforec --help` instant and a benchmark free of the others' imports
    if args.what == "data":
        from fastforec.bench import data as bench
    elif args.what == "kernels":
        from fastforec.bench import kernels as bench
    elif args.what == "step":
        from fastforec.bench import step as bench
    elif args.what == "e2e":
        from fastforec.bench import e2e as bench
    elif args.what == "gpu-check":
        from fastforec.bench import gpu_check as bench
    else:
        raise ValueError(f"unknown benchmark {args.what!r}; choose data, kernels, step, e2e or gpu-check")
    return bench.run(args)
