"""`bench --what gpu-check`: the tables it prints from its result (the JSON file's content)."""

from __future__ import annotations

from typing import Any


def _count(n: int | None) -> str:
    return "-" if n is None else str(n)


def print_tables(result: dict[str, Any]) -> None:
    from rich.table import Table

    from fastforec.bench.tables import print_rich

    c = result["ceilings"]
    print_rich(f"[bold]gpu-check[/bold] on {result['environment']['device_name']} "
               f"({'dry run' if result['dry_run'] else 'full'}), {result['elapsed_s']:.0f} s")
    print_rich(f"ceilings: bf16 matmul {c['bf16_matmul_tflops']:.3g} TFLOP/s (n={c['matmul_n']}), "
               f"copy {c['copy_gbps']:.1f} GB/s (read + write)")
    k = result["kernels"]
    table = Table(title="Triton kernels vs fp64")
    for col in ("case", "dtype", "kernel", "errors", "ms", "GB/s", "of copy", "ok"):
        table.add_column(col, justify="right" if col in ("ms", "GB/s", "of copy") else "left")
    for r in k["rows"]:
        errs = ", ".join(f"{n}={v:.2g}" for n, v in r["errors"].items())
        table.add_row(r["case"], r["dtype"], r["kernel"], errs, "-" if r["ms"] is None else f"{r['ms']:.3f}",
                      "-" if r["gbps"] is None else f"{r['gbps']:.0f}",
                      "-" if r["bandwidth_fraction"] is None else f"{100 * r['bandwidth_fraction']:.0f}%",
                      "yes" if r["ok"] else "[red]NO")
    print_rich(table)
    s = result["step"]
    table = Table(title=f"training step: {s['model']}, crop {s['crop']}, {s['batch_labeled']} labeled + "
                        f"{s['batch_unlabeled']} unlabeled")
    for col in ("variant", "samples/s", "vs plain fp32", "ms/step", "MFU", "peak GiB", "host syncs/step",
                "launches/step", "ATen ops/step", "warm-up s"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for r in s["rows"]:
        mem = "-" if r["peak_memory_bytes"] is None else f"{r['peak_memory_bytes'] / 2 ** 30:.1f}"
        table.add_row(r["variant"], f"{r['samples_per_s']:.2f}", f"{r['ratio_vs_baseline']:.2f}x",
                      f"{r['step_ms']:.0f}", f"{100 * r['mfu']:.1f}%", mem, _count(r["host_syncs_per_step"]),
                      _count(r["kernel_launches_per_step"]), _count(r["aten_ops_per_step"]), f"{r['warmup_s']:.1f}")
    b = s["baseline"]
    table.add_row(f"{b['what']}, {b['precision']}", f"{b['samples_per_s']:.2f}", "1.00x", f"{b['step_ms']:.0f}",
                  *["-"] * 6)
    print_rich(table)
    v = result["vit_step"]
    crops = " / ".join(dict.fromkeys(str(r["crop"]) for r in v["rows"]))  # DINOv2's, then DINOv3's
    table = Table(title=f"training step: {v['model']}, crop {crops}, {v['batch_labeled']} labeled + "
                        f"{v['batch_unlabeled']} unlabeled, bf16 autocast, ZeRO-1")
    for col in ("backbone", "checkpointing", "samples/s", "ms/step", "MFU", "peak GiB", "host syncs/step",
                "launches/step", "ATen ops/step"):
        table.add_column(col, justify="left" if col == "backbone" else "right")
    for r in v["rows"]:
        if "out_of_memory" in r:
            table.add_row(r["backbone"], str(r["activation_checkpointing"]), "out of memory", *["-"] * 6)
            continue
        mem = "-" if r["peak_memory_bytes"] is None else f"{r['peak_memory_bytes'] / 2 ** 30:.1f}"
        table.add_row(r["backbone"], str(r["activation_checkpointing"]), f"{r['samples_per_s']:.2f}",
                      f"{r['step_ms']:.0f}", f"{100 * r['mfu']:.1f}%", mem, _count(r["host_syncs_per_step"]),
                      _count(r["kernel_launches_per_step"]), _count(r["aten_ops_per_step"]))
    print_rich(table)
    for note in k["notes"] + s["notes"]:
        print_rich(f"note: {note}")
    d = result["dali"]
    print_rich(f"DALI: {d['skipped']}" if "skipped" in d else
               f"DALI {d['device']} pipeline: {d['samples_per_s']:.1f} samples/s at crop {d['crop']} "
               f"(tensors on {d['tensor_device']})" + (f"; {d['note']}" if "note" in d else ""))
