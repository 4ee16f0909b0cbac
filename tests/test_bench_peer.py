"""bench/ carries its own peer (bench/peer/: FastMCP 4 + fastmcp-tasks on Redis and the approve_expense
load generator), which agrees with the reference peer benchmark kept beside the repository, and no
benchmark reaches outside the repository for a file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PEER = BENCH / "peer"
REFERENCE = ROOT.parent / "shared" / "bench" / "peer_fastmcp"
# The reference's files that bench/peer/ holds, byte for byte (setup.sh included: it needs no change).
COPIED = ("server.py", "loadgen.py", "verify_client.py", "requirements.lock", "setup.sh")
OUTSIDE = re.compile(r"shared/|(?<![\w.~-])/work\b|ROOT\.parent\b")


def bench_files() -> list[Path]:
    return sorted(path for path in BENCH.rglob("*")
                  if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc")


def test_bench_holds_its_own_peer() -> None:
    missing = [name for name in (*COPIED, "README.md") if not (PEER / name).is_file()]
    assert not missing, f"bench/peer/ lacks {missing}"


@pytest.mark.parametrize("name", COPIED)
def test_the_peer_agrees_with_the_reference(name: str) -> None:
    if not REFERENCE.is_dir():
        pytest.skip(f"no reference peer beside the repository ({REFERENCE} is absent): nothing to compare with")
    assert (PEER / name).read_bytes() == (REFERENCE / name).read_bytes(), \
        f"bench/peer/{name} differs from {REFERENCE / name}"


def test_no_benchmark_names_a_path_outside_the_repository() -> None:
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
             for path in bench_files()
             for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
             if OUTSIDE.search(line)]
    assert not found, "bench/ names paths outside the repository:\n" + "\n".join(found)
