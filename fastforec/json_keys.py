"""JSON text whose objects name every key once.

``json.loads`` keeps the last of two equal keys without a word: a config holding
``"max_steps": 2, "max_steps": 3`` trains 3 steps, and a ``"train"`` section given twice drops
the first one whole. :func:`loads_unique` refuses such text and says where: the key's path and
the lines of both occurrences.

Detection is json's own (``object_pairs_hook`` sees every pair, escapes decoded); only when it
finds a duplicate does :func:`locate_duplicate` scan the (then known valid) text for positions,
which the hook does not get.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from json.decoder import scanstring
from typing import Any

_WHITESPACE = " \t\n\r"


class DuplicateKey(ValueError):
    """``key`` (a dotted path, ``[i]`` for list items) appears twice in one object."""

    def __init__(self, key: str, first_line: int | None, second_line: int | None):
        lines = f" (lines {first_line} and {second_line})" if first_line is not None else ""
        super().__init__(f"key '{key}' is given twice in the same object{lines}")
        self.key, self.first_line, self.second_line = key, first_line, second_line


class _Repeated(Exception):
    """Raised by the hook: json.loads stops at the first object with a repeated key."""


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _Repeated
    return obj


def loads_unique(text: str) -> Any:
    """``json.loads(text)``, raising :class:`DuplicateKey` when an object repeats a key (at any
    depth); ``json.JSONDecodeError`` as usual for text that is not JSON."""
    try:
        return json.loads(text, object_pairs_hook=_unique_object)
    except _Repeated:
        raise locate_duplicate(text) from None


@dataclass
class _Container:
    segment: str  # how the path names this container: "train", "[2]", or "" for the top level
    keys: dict[str, int] | None  # an object's keys so far -> their line; None for a list
    index: int = 0  # a list's current item


def locate_duplicate(text: str) -> DuplicateKey:
    """The first repeated key of valid JSON ``text``, with the lines of both occurrences."""
    open_: list[_Container] = []
    last_key = ""
    i = 0
    while i < len(text):
        c = text[i]
        if c == '"':
            value, end = scanstring(text, i + 1)
            j = end
            while j < len(text) and text[j] in _WHITESPACE:
                j += 1
            keys = open_[-1].keys if open_ else None
            if j < len(text) and text[j] == ":" and keys is not None:  # a key, not a string value
                line = text.count("\n", 0, i) + 1
                if value in keys:
                    return DuplicateKey(_path(open_, value), keys[value], line)
                keys[value] = line
                last_key = value
            i = end
            continue
        if c in "{[":
            parent = open_[-1] if open_ else None
            segment = "" if parent is None else f"[{parent.index}]" if parent.keys is None else last_key
            open_.append(_Container(segment, {} if c == "{" else None))
        elif c in "}]":
            open_.pop()
        elif c == "," and open_ and open_[-1].keys is None:
            open_[-1].index += 1
        i += 1
    return DuplicateKey("?", None, None)  # not reached for text json itself found a repeat in


def _path(open_: list[_Container], key: str) -> str:
    path = ""
    for segment in [c.segment for c in open_[1:]] + [key]:
        path += segment if segment.startswith("[") or not path else f".{segment}"
    return path
