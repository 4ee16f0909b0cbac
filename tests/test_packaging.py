"""An installed (non-editable) wheel carries the event contract, the demo tools and what the local Kafka
cluster reads, and finds them."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from examples.demo import app as demo_app

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_ships_and_finds_the_schemas_and_demo_tools(tmp_path: Path, broker_kind: str) -> None:
    if broker_kind == "kafka":
        pytest.skip("builds and reads a wheel, no broker: the embedded run covers it")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("ledger-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(p.name for p in (ROOT / "schemas").glob("*.avsc"))
    assert sorted(n.rsplit("/", 1)[1] for n in names if n.startswith("ledger/_schemas/")) == shipped
    assert any(n.startswith("projections/") for n in names)
    assert {"ledger/_compose/compose.yaml", "ledger/_compose/kafka/cluster.env", "ledger/_compose/kafka/pom.xml"} <= set(names)

    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=300,
    )
    assert install.returncode == 0, install.stderr
    probe = subprocess.run(
        [sys.executable, "-c", "import ledger, ledger.contract.schemas as s, ledger.cli.loading as l; print(ledger.__file__); "
         "print(s.schema_dir()); print(s.current().version); print(l.default_app_path()); "
         "print(len(l.load_app(str(l.default_app_path())).tools)); import ledger.kafka.cluster as c; print(c.compose_dir()); "
         "print(c.kafka_version())"],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)}, timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    module, schema_dir, version, demo, tools, compose, kafka = probe.stdout.split()
    assert module.startswith(str(target)) and schema_dir.startswith(str(target))
    assert int(version) == len(shipped)
    assert demo.startswith(str(target)) and int(tools) == len(demo_app.tools)
    assert compose.startswith(str(target)) and kafka.count(".") == 2
