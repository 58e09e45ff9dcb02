"""method = base x auxiliary task: how method.name, method.base and method.aux resolve, the
command-line form, and the settings that need a teacher the base does not train."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fastforec.config import AUX_TASKS, BASES, ConfigError, config_from_dict, load_config

REPO = Path(__file__).resolve().parents[1]


def _method(**method) -> object:
    return config_from_dict({"method": method}).method


@pytest.mark.parametrize("name,base,aux,label", [
    ("supervised", "supervised", "none", "supervised"), ("mean_teacher", "mean_teacher", "none", "mean_teacher"),
    ("rec", "mean_teacher", "rec", "rec"), ("forec", "mean_teacher", "forec", "forec"),
    ("fgbg", "mean_teacher", "fgbg", "fgbg")])
def test_names_keep_their_meaning(name: str, base: str, aux: str, label: str) -> None:
    m = _method(name=name)
    assert (m.base_name, m.aux_name, m.label) == (base, aux, label)
    assert m.has_teacher == (base == "mean_teacher") and m.uses_unlabeled == (base != "supervised")
    assert m.reconstruction == {"none": None, "rec": "rgb", "forec": "rgb", "fgbg": "fgbg"}[aux]
    assert m.strong_views == 1
    # spelling the same pair out gives the same method and the same display name
    spelled = _method(name=name, base=base, aux=aux)
    assert (spelled.base_name, spelled.aux_name, spelled.label) == (base, aux, label)


# Every base x auxiliary task, written out: (EMA teacher, strong views, display name) with
# method.name left at its default "forec" (mean teacher + forec), so that only that pair keeps it.
PAIRS = {
    ("supervised", "none"): (False, 1, "supervised"), ("supervised", "rec"): (False, 1, "supervised+rec"),
    ("supervised", "forec"): (False, 1, "supervised+forec"), ("supervised", "fgbg"): (False, 1, "supervised+fgbg"),
    ("mean_teacher", "none"): (True, 1, "mean_teacher"), ("mean_teacher", "rec"): (True, 1, "mean_teacher+rec"),
    ("mean_teacher", "forec"): (True, 1, "forec"), ("mean_teacher", "fgbg"): (True, 1, "mean_teacher+fgbg"),
    ("fixmatch", "none"): (False, 1, "fixmatch"), ("fixmatch", "rec"): (False, 1, "fixmatch+rec"),
    ("fixmatch", "forec"): (False, 1, "fixmatch+forec"), ("fixmatch", "fgbg"): (False, 1, "fixmatch+fgbg"),
    ("unimatch", "none"): (False, 2, "unimatch"), ("unimatch", "rec"): (False, 2, "unimatch+rec"),
    ("unimatch", "forec"): (False, 2, "unimatch+forec"), ("unimatch", "fgbg"): (False, 2, "unimatch+fgbg"),
    ("unimatch_v2", "none"): (True, 2, "unimatch_v2"), ("unimatch_v2", "rec"): (True, 2, "unimatch_v2+rec"),
    ("unimatch_v2", "forec"): (True, 2, "unimatch_v2+forec"), ("unimatch_v2", "fgbg"): (True, 2, "unimatch_v2+fgbg"),
}
HEADS = {"none": None, "rec": "rgb", "forec": "rgb", "fgbg": "fgbg"}


def test_the_table_names_every_pair_the_config_accepts() -> None:
    assert set(PAIRS) == {(b, a) for b in BASES for a in AUX_TASKS}


@pytest.mark.parametrize("base, aux", sorted(PAIRS))
def test_every_pair_is_a_method(base: str, aux: str) -> None:
    teacher, views, label = PAIRS[base, aux]
    m = _method(base=base, aux=aux)
    assert (m.base_name, m.aux_name, m.label) == (base, aux, label)
    assert (m.has_teacher, m.strong_views, m.reconstruction) == (teacher, views, HEADS[aux])
    assert m.uses_unlabeled == (base != "supervised")


def test_base_and_aux_replace_their_half_of_the_name() -> None:
    m = _method(name="forec", base="unimatch")
    assert (m.base_name, m.aux_name, m.label) == ("unimatch", "forec", "unimatch+forec")
    m = _method(name="mean_teacher", base="fixmatch")
    assert (m.base_name, m.aux_name, m.label) == ("fixmatch", "none", "fixmatch")
    m = _method(name="supervised", aux="forec")  # ground truth only: labeled images
    assert (m.base_name, m.aux_name, m.uses_unlabeled) == ("supervised", "forec", False)


def test_command_line_form(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"method": {"name": "mean_teacher"}}))
    m = load_config(path, ["method.base=unimatch", "method.aux=forec"]).method
    assert (m.base_name, m.aux_name, m.label) == ("unimatch", "forec", "unimatch+forec")


@pytest.mark.parametrize("method,extra,key,text", [
    ({"base": "mystery"}, {}, "method.base", "'supervised', 'mean_teacher', 'fixmatch', 'unimatch'"),
    ({"aux": "depth"}, {}, "method.aux", "'none', 'rec', 'forec', 'fgbg'"),
    ({"base": "unimatch", "warmup_reset_teacher": True}, {}, "method.warmup_reset_teacher",
     "base 'unimatch' trains no EMA teacher"),
    ({"base": "fixmatch"}, {"eval": {"model": "teacher"}}, "eval.model", "method 'fixmatch+forec' trains no teacher"),
    ({"base": "unimatch", "fp_dropout": 1.0}, {}, "method.fp_dropout", "must be in [0, 1)"),
])
def test_impossible_settings_name_the_key(method: dict, extra: dict, key: str, text: str) -> None:
    with pytest.raises(ConfigError) as exc:
        config_from_dict({"method": method, **extra})
    assert str(exc.value).startswith(f"{key}:") and text in str(exc.value)


def test_eval_both_scores_the_student_only_without_a_teacher() -> None:
    cfg = config_from_dict({"method": {"base": "unimatch"}, "eval": {"model": "both"}})
    assert cfg.eval_models == ("student",)


def test_bad_base_on_the_command_line_exits_2_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"method": {"name": "forec"}}))
    proc = subprocess.run([sys.executable, str(REPO / "fastforec" / "train.py"), "--config", str(path),
                           "--set", "method.base=meanteacher"], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "method.base" in proc.stderr and "'unimatch'" in proc.stderr and "Traceback" not in proc.stderr


# The shipped UniMatch recipes are checked against UniMatch's settings in tests/test_recipes.py.


def test_aux_none_on_the_command_line_is_the_task_none_and_null_falls_back_to_the_name(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"method": {"name": "forec"}}))
    m = load_config(path, ["method.base=unimatch", "method.aux=none"]).method
    assert (m.aux, m.aux_name, m.label, m.reconstruction) == ("none", "none", "unimatch", None)
    m = load_config(path, ["method.base=unimatch", "method.aux=null"]).method
    assert (m.aux, m.aux_name, m.label) == (None, "forec", "unimatch+forec")
