"""Running ledger commands as separate processes, as users and compose run them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import fields
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from ledger.settings import Settings

LEDGER = [sys.executable, "-m", "ledger.cli"]


def wait_for_line(process: subprocess.Popen[str], needle: str, timeout: float = 30) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} not printed; got {lines}")


def role_environment(settings: Settings) -> dict[str, str]:
    """This process's environment with every setting of ``settings`` as its LEDGER_* variable."""
    environment = dict(os.environ)
    for field in fields(Settings):
        value = getattr(settings, field.name)
        if value is not None:
            environment[field.metadata["env"]] = str(value)
    return environment


def drain(process: subprocess.Popen[str], lines: int = 200) -> deque[str]:
    """Keep reading the process's output so a full pipe never blocks it; the last ``lines`` are kept."""
    tail: deque[str] = deque(maxlen=lines)
    threading.Thread(target=lambda: tail.extend(iter(process.stdout.readline, "")), daemon=True).start()
    return tail


@contextmanager
def spawned(args: list[str], settings: Settings, ready: str) -> Iterator[subprocess.Popen[str]]:
    """``ledger ARGS`` in its own process, once it printed ``ready``; killed on the way out.

    When the block fails, the end of the process's output is printed for the test report.
    """
    process = subprocess.Popen(LEDGER + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=role_environment(settings))
    try:
        wait_for_line(process, ready, timeout=60)
        tail = drain(process)
        try:
            yield process
        except BaseException:
            print(f"--- last output of ledger {' '.join(args)} ---", *tail, sep="\n", file=sys.stderr)
            raise
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait(30)
