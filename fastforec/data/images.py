"""How undecodable image bytes are described to the user.

PIL names the object it was given, and for bytes that is ``<_io.BytesIO object at 0x...>``: useless
in a message. Callers name the file (or shard and member) themselves; this says what is wrong.
"""

from __future__ import annotations

import re

from PIL import UnidentifiedImageError

_OBJECT_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")


def decode_problem(error: Exception, data: bytes | bytearray | memoryview) -> str:
    """Why ``data`` did not decode: empty, not an image format PIL knows, or the decoder's error."""
    if len(data) == 0:
        return "the file is empty (0 bytes)"
    if isinstance(error, UnidentifiedImageError):
        return f"not a recognisable image ({len(data)} bytes that are no JPEG, PNG or other known format)"
    text = _OBJECT_REPR.sub("", str(error)).strip() or "no details"
    return f"{type(error).__name__}: {text}"
