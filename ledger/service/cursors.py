"""Page cursors of task lists: an opaque text for the client, checked strictly when it comes back."""

from __future__ import annotations

import base64
import binascii
import json

from ledger.contract.values import problem_in
from ledger.service.errors import InvalidCursor
from ledger.service.live_view import ListKey

MAX_CURSOR_CHARS = 256


def encode_cursor(key: ListKey) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode()


def decode_cursor(cursor: str) -> ListKey:
    if len(cursor) <= MAX_CURSOR_CHARS:
        try:
            created_at, task_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
            if isinstance(created_at, int) and 0 <= created_at < 2**63 and isinstance(task_id, str) and \
                    len(task_id) <= MAX_CURSOR_CHARS and problem_in(task_id) is None:
                return created_at, task_id
        except (ValueError, TypeError, binascii.Error, RecursionError):
            pass
    raise InvalidCursor(f"Invalid cursor: {cursor[:80]!r}{'...' if len(cursor) > 80 else ''}")
