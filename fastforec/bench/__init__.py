"""Benchmarks: `fastforec bench --what data|kernels|step|e2e|gpu-check`. Each prints a table and can write JSON."""

from __future__ import annotations

import argparse


def run_bench(args: argparse.Namespace) -> int:
    # Imported on demand: each benchmark pulls in different heavy dependencies (DALI, Triton, DeepSpeed).
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
