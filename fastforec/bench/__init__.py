"""Benchmarks: `fastforec bench --what data|kernels|step|e2e`. Each prints a table and can write JSON."""

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
    else:
        raise ValueError(f"unknown benchmark {args.what!r}; choose data, kernels, step or e2e")
    return bench.run(args)
