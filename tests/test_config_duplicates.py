"""A JSON config that names a key twice is refused: json.loads would keep the last one silently
(a second "train" section replacing the first whole). The message names the file, the key's path
and both lines, through the real command line (exit 2, no traceback)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastforec.cli import main
from fastforec.config import ConfigError, load_config, shipped_configs
from fastforec.json_keys import DuplicateKey, loads_unique

SCALAR_TWICE = """{
  "train": {"name": "x",
    "max_steps": 2,
    "max_steps": 3},
  "deepspeed": {}
}
"""
SECTION_TWICE = """{
  "train": {"max_steps": 2},
  "model": {"backbone": "resnet18"},
  "train": {"epochs": 1}
}
"""


def _eval_with(config: Path, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    # eval reads --config before it looks at the checkpoint: the config is the first error
    code = main(["eval", "--config", str(config), "--checkpoint", str(config.parent / "no_run")])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("text, key, lines", [(SCALAR_TWICE, "train.max_steps", (3, 4)),
                                              (SECTION_TWICE, "train", (2, 4))])
def test_a_key_given_twice_is_refused_with_its_path_and_both_lines(text: str, key: str, lines: tuple[int, int],
                                                                   tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "dup.json"
    config.write_text(text)
    code, err = _eval_with(config, capsys)
    assert code == 2, err
    assert f"{config}: key '{key}' is given twice in the same object (lines {lines[0]} and {lines[1]})" in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_a_duplicate_in_a_file_it_extends_names_that_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = tmp_path / "base.json"
    base.write_text('{"optim": {"lr": 0.1,\n "lr": 0.2}}')
    config = tmp_path / "recipe.json"
    config.write_text('{"extends": "base.json", "train": {"max_steps": 2}}')
    code, err = _eval_with(config, capsys)
    assert code == 2 and f"{base}: key 'optim.lr' is given twice in the same object (lines 1 and 2)" in err, err


def test_equal_keys_in_different_objects_and_escaped_spellings() -> None:
    # the same name in sibling objects or list items is no repeat; an escape spelling the same
    # name as another key is one (json decodes both to one string)
    assert loads_unique('{"a": {"x": 1}, "b": {"x": 2}, "l": [{"x": 1}, {"x": 2}]}')["l"][1]["x"] == 2
    with pytest.raises(DuplicateKey, match=r"key 'l\[1\]\.x' is given twice .*lines 2 and 3"):
        loads_unique('{"l": [{"x": 1},\n {"x": 2,\n "x": 3}]}')
    with pytest.raises(DuplicateKey, match="key 'k_' is given twice"):
        loads_unique('{"k\\u005f": 1, "k_": 2}')


def test_every_shipped_config_names_each_key_once() -> None:
    names = shipped_configs()
    assert names
    for name in names:
        try:
            load_config(name)
        except ConfigError as e:
            assert "given twice" not in str(e), e
