"""Printing benchmark results: rich output that keeps its columns in log files, table titles."""

from __future__ import annotations

from typing import Any

from fastforec.terminal import output_console


def model_label(result: dict[str, Any]) -> str:
    """e.g. "resnet18 OS16 decoder 64" for table titles."""
    return f"{result['backbone']} OS{result['output_stride']} decoder {result['decoder_channels']}"


def print_rich(renderable: Any) -> None:
    output_console().print(renderable)
