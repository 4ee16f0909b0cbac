"""JSON values as ledger takes them from outside: only what JSON can say, in text that UTF-8 can carry.

Python's JSON reader accepts ``NaN``, ``Infinity`` and numbers like ``1e999`` (read as infinity),
and JSON's ``\\ud800`` escapes can produce a lone surrogate, which no UTF-8 encoder (Avro's
included) can write. Such a value is refused where it comes in, so that the log only ever holds
standard JSON in valid text.
"""

from __future__ import annotations

import math
from typing import Any


def problem_in(value: Any, where: str = "value") -> str | None:
    """Why ``value`` (a decoded JSON value) is not one ledger can keep, or None."""
    pending: list[tuple[Any, str]] = [(value, where)]
    while pending:  # a loop, not recursion: the nesting is the sender's choice
        item, path = pending.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return f"{path}: {item!r} is not a JSON number"
        if isinstance(item, str) and not _encodable(item):
            return f"{path}: text with a lone surrogate (an unpaired \\ud800-\\udfff escape) is not valid Unicode"
        if isinstance(item, dict):
            for key, inner in item.items():
                if isinstance(key, str) and not _encodable(key):
                    return f"{path}: a key with a lone surrogate (an unpaired \\ud800-\\udfff escape) is not valid Unicode"
                pending.append((inner, f"{path}.{key}"))
        elif isinstance(item, list):
            pending.extend((inner, f"{path}[{index}]") for index, inner in enumerate(item))
    return None


def printable(text: str) -> str:
    """``text`` with any lone surrogate written as its escape, so it can be recorded."""
    return text if _encodable(text) else text.encode("utf-8", "backslashreplace").decode("utf-8")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
