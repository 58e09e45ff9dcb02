"""method = base x auxiliary task: method.base and method.aux, what each base needs (methods.BASES),
the old method.name, the command-line form, and the settings a base cannot serve."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fastforec.config import AUX_TASKS, BASES, ConfigError, config_from_dict, load_config
from fastforec.methods import BASES as BASES_TABLE
from fastforec.methods import check_config, eval_models

REPO = Path(__file__).resolve().parents[1]


def _method(**method) -> object:
    return config_from_dict({"method": method}).method


@pytest.mark.parametrize("name,base,aux", [
    ("supervised", "supervised", "none"), ("mean_teacher", "mean_teacher", "none"),
    ("rec", "mean_teacher", "rec"), ("forec", "mean_teacher", "forec"), ("fgbg", "mean_teacher", "fgbg")])
def test_old_method_names_keep_their_meaning(name: str, base: str, aux: str) -> None:
    """Configs and checkpoints from before base x aux carry method.name: it stands for its pair."""
    m = _method(name=name)
    assert (m.base, m.aux) == (base, aux)
    assert m.label == (base if aux == "none" else f"{base}+{aux}")
    assert BASES_TABLE[m.base].teacher == (base == "mean_teacher") and BASES_TABLE[m.base].unlabeled == (
        base != "supervised")
    assert m.reconstruction == {"none": None, "rec": "rgb", "forec": "rgb", "fgbg": "fgbg"}[aux]


# Every base x auxiliary task, written out: (EMA teacher, strong views, display name).
PAIRS = {
    ("supervised", "none"): (False, 1, "supervised"), ("supervised", "rec"): (False, 1, "supervised+rec"),
    ("supervised", "forec"): (False, 1, "supervised+forec"), ("supervised", "fgbg"): (False, 1, "supervised+fgbg"),
    ("mean_teacher", "none"): (True, 1, "mean_teacher"), ("mean_teacher", "rec"): (True, 1, "mean_teacher+rec"),
    ("mean_teacher", "forec"): (True, 1, "mean_teacher+forec"),
    ("mean_teacher", "fgbg"): (True, 1, "mean_teacher+fgbg"),
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
    # the config spells the bases the loss assembly defines, no more, no fewer
    assert set(BASES) == set(BASES_TABLE)


@pytest.mark.parametrize("base, aux", sorted(PAIRS))
def test_every_pair_is_a_method(base: str, aux: str) -> None:
    teacher, views, label = PAIRS[base, aux]
    m = _method(base=base, aux=aux)
    assert (m.base, m.aux, m.label) == (base, aux, label)
    needs = BASES_TABLE[m.base]
    assert (needs.teacher, needs.strong_views, m.reconstruction) == (teacher, views, HEADS[aux])
    assert needs.unlabeled == (base != "supervised")


def test_base_and_aux_beside_an_old_name_replace_its_half() -> None:
    m = _method(name="forec", base="unimatch")
    assert (m.base, m.aux, m.label) == ("unimatch", "forec", "unimatch+forec")
    m = _method(name="mean_teacher", base="fixmatch")
    assert (m.base, m.aux, m.label) == ("fixmatch", "none", "fixmatch")
    m = _method(name="supervised", aux="forec")  # ground truth only: labeled images
    assert (m.base, m.aux, BASES_TABLE[m.base].unlabeled) == ("supervised", "forec", False)


def test_command_line_form(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"method": {"base": "mean_teacher", "aux": "none"}}))
    m = load_config(path, ["method.base=unimatch", "method.aux=forec"]).method
    assert (m.base, m.aux, m.label) == ("unimatch", "forec", "unimatch+forec")
    # an old command's --set method.name sets both halves: rec on a UniMatch file is the mean teacher's rec
    path.write_text(json.dumps({"method": {"base": "unimatch", "aux": "none"}}))
    m = load_config(path, ["method.name=rec"]).method
    assert (m.base, m.aux) == ("mean_teacher", "rec")
    with pytest.raises(ConfigError, match=r"method.name: 'forecc' is not one of the old method names .*set those two"):
        load_config(path, ["method.name=forecc"])


def test_a_checkpoint_config_from_before_base_and_aux_loads_with_its_meaning() -> None:
    # what dataclasses.asdict wrote then: the name, and base/aux null
    m = config_from_dict({"method": {"name": "rec", "base": None, "aux": None}}).method
    assert (m.base, m.aux) == ("mean_teacher", "rec")
    m = config_from_dict({"method": {"name": "forec", "base": "unimatch_v2", "aux": None}}).method
    assert (m.base, m.aux) == ("unimatch_v2", "forec")


@pytest.mark.parametrize("method,extra,key,text", [
    ({"base": "mystery"}, {}, "method.base", "'supervised', 'mean_teacher', 'fixmatch', 'unimatch'"),
    ({"aux": "depth"}, {}, "method.aux", "'none', 'rec', 'forec', 'fgbg'"),
    ({"base": "unimatch", "fp_dropout": 1.0}, {}, "method.fp_dropout", "must be in [0, 1)"),
])
def test_impossible_settings_name_the_key(method: dict, extra: dict, key: str, text: str) -> None:
    with pytest.raises(ConfigError) as exc:
        config_from_dict({"method": method, **extra})
    assert str(exc.value).startswith(f"{key}:") and text in str(exc.value)


@pytest.mark.parametrize("method,extra,key,text", [
    ({"base": "unimatch", "warmup_reset_teacher": True}, {}, "method.warmup_reset_teacher",
     "base 'unimatch' trains no EMA teacher"),
    ({"base": "fixmatch"}, {"eval": {"model": "teacher"}}, "eval.model", "method 'fixmatch+forec' trains no teacher"),
    ({"base": "fixmatch"}, {"data": {"batch_size": 1}}, "data.batch_size", "needs at least 2 per rank"),
])
def test_settings_the_base_cannot_serve_name_the_key(method: dict, extra: dict, key: str, text: str) -> None:
    cfg = config_from_dict({"method": method, **extra})  # each value is valid on its own
    with pytest.raises(ConfigError) as exc:
        check_config(cfg)
    assert str(exc.value).startswith(f"{key}:") and text in str(exc.value)


def test_eval_both_scores_the_student_only_without_a_teacher() -> None:
    cfg = config_from_dict({"method": {"base": "unimatch"}, "eval": {"model": "both"}})
    assert eval_models(cfg) == ("student",)


def test_bad_base_on_the_command_line_exits_2_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"method": {"name": "forec"}}))
    proc = subprocess.run([sys.executable, str(REPO / "fastforec" / "train.py"), "--config", str(path),
                           "--set", "method.base=meanteacher"], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "method.base" in proc.stderr and "'unimatch'" in proc.stderr and "Traceback" not in proc.stderr


# The shipped UniMatch recipes are checked against UniMatch's settings in tests/test_recipes.py.


def test_aux_none_on_the_command_line_is_the_task_none(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"method": {"base": "mean_teacher", "aux": "forec"}}))
    m = load_config(path, ["method.base=unimatch", "method.aux=none"]).method
    assert (m.aux, m.label, m.reconstruction) == ("none", "unimatch", None)
    with pytest.raises(ConfigError, match="method.aux"):
        load_config(path, ["method.aux=null"])
