"""JSON values as ledger takes them from outside: only what JSON can say, in text that UTF-8 can carry.

Python's JSON reader accepts ``NaN``, ``Infinity`` and numbers like ``1e999`` (read as infinity),
and JSON's ``\\ud800`` escapes can produce a lone surrogate, which no UTF-8 encoder (Avro's
included) can write. Such a value is refused where it comes in, so that the log only ever holds
standard JSON in valid text.
"""

from __future__ import annotations

import math
import sys
from typing import Any


def problem_in(value: Any, where: str = "value") -> str | None:
    """Why ``value`` (a decoded JSON value) is not one ledger can keep, or None."""
    pending: list[tuple[Any, str]] = [(value, where)]
    while pending:  # a loop, not recursion: the nesting is the sender's choice
        item, path = pending.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return f"{printable(path)}: {item!r} is not a JSON number"
        if isinstance(item, int) and not isinstance(item, bool) and abs(item) > LARGEST_NUMBER:
            return f"{printable(path)}: an integer of {len(str(abs(item)))} digits is past what a JSON number carries"
        if isinstance(item, str) and not _encodable(item):
            return f"{printable(path)}: text with a lone surrogate (an unpaired \\ud800-\\udfff escape) is not valid Unicode"
        if isinstance(item, dict):
            for key, inner in item.items():
                if isinstance(key, str) and not _encodable(key):
                    return f"{printable(path)}: a key with a lone surrogate (an unpaired \\ud800-\\udfff escape) is not valid Unicode"
                pending.append((inner, f"{path}.{key}"))
        elif isinstance(item, list):
            pending.extend((inner, f"{path}[{index}]") for index, inner in enumerate(item))
    return None


# The largest magnitude a JSON number has in every reader (an IEEE double); a larger integer turns into
# an error, or infinity, wherever it is read as a number.
LARGEST_NUMBER = int(sys.float_info.max)
# The most of a client's text (an id it names) a refusal copies into the log or an error message.
RECORDED_CHARS = 200


def printable(text: str, limit: int = RECORDED_CHARS) -> str:
    """``text`` as a refusal may record it: any lone surrogate written as its escape, and no longer than
    ``limit`` characters (a longer one is cut, saying how long it was): what a client sends must not
    decide how much the log keeps of it."""
    if len(text) > limit:
        text = f"{text[:limit]}… ({len(text):,} characters in all)"
    return text if _encodable(text) else text.encode("utf-8", "backslashreplace").decode("utf-8")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
