"""`fastforec` command line: train, eval, predict, bench, visualize, ablate.

Each subcommand lives in its own module; this file only parses arguments and dispatches, and
imports the heavy modules lazily so `fastforec --help` is instant.
"""

from __future__ import annotations

import argparse
import sys


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="throughput benchmarks (side by side, as ratios)")
    p.add_argument("--what", required=True, choices=["data", "kernels", "step", "e2e"])
    p.add_argument("--config", help="run config (JSON); needed for data, step, e2e")
    p.add_argument("--data", help="shard directory (overrides data.root)")
    p.add_argument("--crop", type=int, help="crop size (overrides data.crop_size)")
    p.add_argument("--threads", type=int, help="DALI threads / DataLoader workers")
    p.add_argument("--batches", type=int, default=None, help="batches to time per contender")
    p.add_argument("--json", dest="json_out", help="write the results as JSON to this file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak (else measured)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastforec", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_bench(sub)
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        from fastforec.bench import run_bench

        return run_bench(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
