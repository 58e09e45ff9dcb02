"""`fastforec bench --what data` end to end on a tiny shard set (numbers are not asserted:
performance is measured by running the benchmark, not in tests)."""

from __future__ import annotations

import json

import torch

from fastforec.cli import main


def _args(tmp_path, data, **kw) -> list[str]:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"data": {"batch_size": 4, "num_threads": 1}}))
    argv = ["bench", "--what", "data", "--config", str(config), "--data", str(data), "--crop", "32",
            "--threads", "2", "--batches", "2"]
    for k, v in kw.items():
        argv += [f"--{k}", str(v)]
    return argv


def test_bench_data_writes_the_contract_keys(tmp_path, identity_data, capsys):
    out = tmp_path / "bench.json"
    assert main(_args(tmp_path, identity_data.root, json=out)) == 0
    result = json.loads(out.read_text())
    for key in ("dali_samples_per_s", "baseline_samples_per_s", "ratio", "decode_only_samples_per_s",
                "dali_cpu_ms_per_sample", "baseline_cpu_ms_per_sample", "cpu_ratio"):
        assert result[key] > 0, key
    assert abs(result["ratio"] - result["dali_samples_per_s"] / result["baseline_samples_per_s"]) < 1e-9
    for key in ("dali", "baseline", "decode_only"):
        assert 0 < result[f"{key}_cores_busy"] < 4 * result["cpu_count"], key
    # the DALI process's CPU by thread, from the same round as dali_cores_busy and read inside the
    # process's own window: the threads' sum cannot exceed the process's (no timing bound: it holds
    # on any machine and load, since both are readings of the same growing counters)
    assert set(result["dali_thread_cores"]) == {"DALI worker pool", "DALI executor", "Python + torch"}
    assert all(v >= 0 for v in result["dali_thread_cores"].values())
    if result["dali_thread_clock"] == "schedstat":
        assert sum(result["dali_thread_cores"].values()) <= result["dali_cores_busy"] * (1 + 1e-9)
    else:  # 10 ms ticks per thread: each group may round up by one tick
        assert result["dali_thread_clock"] == "ticks"
    assert result["crop"] == 32 and result["threads"] == 2 and result["batch_size"] == 4
    assert all(len(v) == result["rounds"] for v in result["per_round"].values())
    captured = capsys.readouterr()
    out = " ".join(captured.out.split())  # rich wraps the table's cells at the test console's width
    assert "DataLoader" in out and "DALI's cores busy by thread: DALI worker pool" in out
    assert "recycled" not in captured.err  # 2 batches x 4 of 26 samples


def test_bench_data_times_the_methods_strong_views_against_equal_work(tmp_path, identity_data, capsys):
    out = tmp_path / "bench.json"
    argv = _args(tmp_path, identity_data.root, json=out) + ["--set", "method.base=unimatch", "--set", "method.aux=none"]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert (result["method"], result["strong_views"]) == ("unimatch", 2)
    assert "weak + 2 strong views" in result["produces"]["dali"] and "standardised" in result["produces"]["baseline"]
    assert "unimatch recipe (2 strong view(s))" in " ".join(capsys.readouterr().out.split())


def test_the_equal_work_reference_makes_what_the_trainer_receives(identity_data) -> None:
    from fastforec.bench.reference_loader import reference_loader
    from fastforec.config import DataConfig

    cfg = DataConfig(root=str(identity_data.root), crop_size=24, batch_size=2, num_threads=1, device="cpu")
    batch = next(iter(reference_loader(identity_data, cfg, split="unlabeled", num_workers=0, strong_views=2,
                                       normalize=True)))
    assert set(batch) == {"weak", "strong", "strong2", "valid", "box", "box2"}
    assert batch["strong2"].shape == batch["weak"].shape == (2, 3, 24, 24) and batch["weak"].dtype == torch.float32
    assert batch["weak"].min() < 0  # standardised, as the peers' loaders hand it over


def test_bench_data_says_when_a_round_recycles_samples(tmp_path, identity_data, capsys):
    assert main(_args(tmp_path, identity_data.root)[:-2] + ["--batches", "8"]) == 0  # 8 x 4 = 32 > 26
    err = capsys.readouterr().err
    assert "a round takes 32 samples (8 batches x 4) from a split of 26: samples are recycled 1.2 times" in err
    assert "give --batches 6 or more data" in err


def test_bench_data_refuses_a_directory_that_is_not_shards(tmp_path, capsys):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("not a dataset")
    assert main(_args(tmp_path, junk)) == 2
    assert "no manifest.json" in capsys.readouterr().err


def test_bench_data_gpu_device_without_cuda_is_a_clear_error(tmp_path, identity_data, capsys):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the GPU data path runs in `fastforec bench --what gpu-check`")
    out = tmp_path / "bench.json"
    assert main(_args(tmp_path, identity_data.root, json=out, device="gpu")) == 2
    assert "--device gpu: no CUDA GPU" in capsys.readouterr().err and not out.exists()


def test_bench_data_names_an_unwritable_data_directory_before_generating(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    assert main(_args(tmp_path, blocker / "bench", synthetic="textured")) == 2
    err = capsys.readouterr().err
    assert "--data" in err and "regular file" in err and "Traceback" not in err
    assert blocker.read_text() == "not a directory"
