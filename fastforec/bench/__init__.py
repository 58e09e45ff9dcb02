"""Benchmarks: `fastforec bench --what data|kernels|step|e2e`. Each prints a table and can write JSON."""

from __future__ import annotations

import argparse
import importlib


def run_bench(args: argparse.Namespace) -> int:
    # One module per benchmark, each exposing run(args) -> int (the exit code).
    module = importlib.import_module(f"fastforec.bench.{args.what}")
    return module.run(args)
