"""Fixtures: a real broker for the session and isolated topics.

``pytest --broker embedded`` (the default) starts the embedded broker (Tansu); ``pytest --broker
kafka`` starts a 3-broker Apache Kafka cluster of local JVMs (``ledger.kafka.cluster``, as
``compose/local-cluster`` runs it). ``LEDGER_TEST_BROKER`` sets the default of ``--broker``;
``LEDGER_BOOTSTRAP`` points the suite at a broker that is already running instead (the tests that
stop and restart brokers then skip).
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from ledger.kafka.broker import EmbeddedBroker, free_port
from ledger.kafka.cluster import LocalCluster
from ledger.kafka.appender import EventLog
from ledger.settings import Settings
from ledger.kafka.topics import ensure_topics
from tests.spawn import LEDGER, drain, wait_for_line

BROKERS = ("embedded", "kafka")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--broker", choices=BROKERS, default=os.environ.get("LEDGER_TEST_BROKER", "embedded"),
                     help="the broker the suite runs on: the embedded broker (Tansu) or a local 3-broker "
                          "Apache Kafka cluster (default: LEDGER_TEST_BROKER, else embedded)")


def pytest_report_header(config: pytest.Config) -> str:
    if os.environ.get("LEDGER_BOOTSTRAP"):
        return f"broker: LEDGER_BOOTSTRAP={os.environ['LEDGER_BOOTSTRAP']} (already running)"
    if config.getoption("--broker") == "kafka":
        return "broker: a local 3-broker Apache Kafka cluster (started for the session)"
    return "broker: the embedded broker (Tansu)"


@pytest.fixture(scope="session")
def broker_kind(request: pytest.FixtureRequest) -> str:
    """``embedded`` or ``kafka``: what the session's broker is."""
    return request.config.getoption("--broker")


@pytest.fixture(scope="session")
def kafka_cluster(broker_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster | None]:
    """The session's local Kafka cluster, which tests may stop and restart brokers of (None otherwise)."""
    if broker_kind != "kafka" or os.environ.get("LEDGER_BOOTSTRAP"):
        yield None
        return
    cluster = LocalCluster(tmp_path_factory.mktemp("kafka"), brokers=3)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def local_cluster(kafka_cluster: LocalCluster | None) -> LocalCluster:
    """The session's local Kafka cluster with every broker running; skips on any other broker."""
    if kafka_cluster is None:
        pytest.skip("stops and starts Apache Kafka brokers: runs with --broker kafka")
    kafka_cluster.start()  # a test before may have left a broker down by failing
    return kafka_cluster


@pytest.fixture(scope="module")
def bootstrap(kafka_cluster: LocalCluster | None) -> Iterator[str]:
    """The broker of a test module: the session's Kafka cluster, or an embedded broker of the module's
    own. Twice a task stayed ``working`` for 30 s in tests/test_worker.py late in the embedded suite,
    with one embedded broker holding every earlier module's topics in memory; a broker per module
    keeps each module's broker as fresh as the first one's (a second each to start)."""
    external = os.environ.get("LEDGER_BOOTSTRAP")
    if external:
        yield external
    elif kafka_cluster is not None:
        yield kafka_cluster.bootstrap
    else:
        with EmbeddedBroker(port=free_port()) as broker:
            yield broker.bootstrap


@pytest.fixture(scope="module")
def dev() -> Iterator[tuple[str, Settings]]:
    """``ledger dev`` (its own embedded broker) on a free port: its MCP URL, and settings that read
    its log."""
    port = free_port()
    process = subprocess.Popen(LEDGER + ["dev", "--port", str(port), "--metrics-port", str(free_port())],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        banner = "".join(wait_for_line(process, "Press Ctrl-C", timeout=60))
        drain(process)
        bootstrap = re.search(r"embedded Kafka\s+(\S+)", banner).group(1)
        yield f"http://127.0.0.1:{port}/mcp", Settings.from_env(bootstrap=bootstrap)
    finally:
        process.kill()
        process.wait(30)


@pytest.fixture
def settings(bootstrap: str) -> Settings:
    # Every test gets its own topics, so tests never see each other's events on a shared cluster.
    return Settings.from_env(
        bootstrap=bootstrap,
        topic_prefix=f"test-{uuid.uuid4().hex[:12]}",
        partitions=4,
        session_timeout_ms=6_000,
    )


@pytest.fixture
async def topics(settings: Settings) -> dict[str, int]:
    return await ensure_topics(settings)


@pytest.fixture
async def event_log(settings: Settings, topics: dict[str, int]) -> AsyncIterator[EventLog]:
    async with EventLog(settings) as log:
        yield log


FIGURES: list[str] = []


@pytest.fixture
def figures(request: pytest.FixtureRequest, broker_kind: str):
    """Record a line of measured figures; they are printed at the end of the run, after the results."""
    def record(line: str) -> None:
        FIGURES.append(f"{request.node.nodeid} [{broker_kind}]: {line}")
        print(line)
    return record


def pytest_terminal_summary(terminalreporter) -> None:
    if FIGURES:
        terminalreporter.section("figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
