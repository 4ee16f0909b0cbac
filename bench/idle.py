"""How quiet `ledger dev` is after activity: CPU of its process and its embedded broker (percent of one
core) in the 3 s right after 20 approve_expense flows, in the 3 s after that, and settled (10-20 s after),
measured from /proc, twice.

    python bench/idle.py

The flows come from bench/flow_load.py under the peer's venv (made as bench/flow.py makes it).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import flow  # noqa: E402

from ledger.kafka.broker import free_port  # noqa: E402

ROUNDS = 2
FLOWS = 20
WINDOWS = ((0, 3), (3, 6), (10, 20))  # seconds after the last flow


def processes(pid: int) -> list[int]:
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [pid, *map(int, children)]


def main() -> None:
    python = flow.peer_python()
    port = free_port()
    dev = subprocess.Popen([sys.executable, "-m", "ledger.cli.main", "dev", "--port", str(port), "--quiet"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=flow.ROOT)
    try:
        for line in dev.stdout:
            if "ledger dev: ready" in line:
                break
        else:
            sys.exit(f"idle.py: ledger dev exited with code {dev.wait()} before it was ready")
        pids = processes(dev.pid)
        impl = next(i for i in flow.IMPLS if i.key == "ledger-tasks@embedded")
        for _ in range(ROUNDS):
            flow.load(python, impl, f"http://127.0.0.1:{port}/mcp", FLOWS, 1)
            start, shares = time.monotonic(), []
            for begin, end in WINDOWS:
                time.sleep(max(0.0, start + begin - time.monotonic()))
                before = sum(map(flow.cpu_seconds, pids))
                time.sleep(max(0.0, start + end - time.monotonic()))
                used = sum(map(flow.cpu_seconds, pids)) - before
                shares.append(f"{begin}-{end} s after: {100 * used / (end - begin):.1f} %")
            print(f"ledger dev and its broker, after {FLOWS} flows: {', '.join(shares)} of a core", flush=True)
    finally:
        flow.stop(dev)


if __name__ == "__main__":
    main()
