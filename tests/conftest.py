"""Fixtures: a real broker for the session and isolated topics.

``pytest --broker embedded`` (the default) starts the embedded broker (Tansu); ``pytest --broker
kafka`` starts a 3-broker Apache Kafka cluster of local JVMs (``ledger.kafka.cluster``, as
``compose/local-cluster`` runs it). ``LEDGER_TEST_BROKER`` sets the default of ``--broker``;
``LEDGER_BOOTSTRAP`` points the suite at a broker that is already running instead (the tests that
stop and restart brokers then skip).

Plain ``pytest`` is the fast run: tests marked ``slow`` (many processes, injected faults, Kafka
clusters of their own, builds) skip unless ``pytest --all`` (which CI runs).
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from ledger.kafka.appender import EventLog
from ledger.kafka.broker import EmbeddedBroker, free_port
from ledger.kafka.cluster import LocalCluster
from ledger.kafka.topics import ensure_topics
from ledger.settings import Settings
from projections.postgres import PostgresStore
from projections.store import ProjectionStore, Store
from tests.support.postgres import binaries, new_database, postgres
from tests.support.secured import SecuredCluster, secured_cluster_command
from tests.support.spawn import LEDGER, drain, wait_for_line
from tests.support.stack import demo_stack, tokened_stack

BROKERS = ("embedded", "kafka")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--broker", choices=BROKERS, default=os.environ.get("LEDGER_TEST_BROKER", "embedded"),
                     help="the broker the suite runs on: the embedded broker (Tansu) or a local 3-broker "
                          "Apache Kafka cluster (default: LEDGER_TEST_BROKER, else embedded)")
    parser.addoption("--all", action="store_true", default=False,
                     help="run the slow tests too (many processes, injected faults, builds); CI does")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--all"):
        return
    skip = pytest.mark.skip(reason="slow: run with --all (CI does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


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


@pytest.fixture(scope="session")
def secured_cluster(broker_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredCluster]:
    """The session's secured local cluster (``tests.support.secured``). Skips on the embedded broker."""
    if broker_kind != "kafka":
        pytest.skip("starts Apache Kafka brokers of its own: runs with --broker kafka")
    with secured_cluster_command(tmp_path_factory.mktemp("secured")) as cluster:
        yield cluster


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


@pytest.fixture(scope="module")
def stack_settings() -> dict[str, Any]:
    """Settings of the module's ``stack`` beyond the defaults; a module that needs others overrides
    this fixture."""
    return {}


@pytest.fixture(scope="module")
def stack_tokens() -> dict[str, str]:
    """The bearer tokens (token -> principal) the module's ``stack`` takes; none (no sign-in) unless a
    module overrides this fixture."""
    return {}


@pytest.fixture(scope="module")
async def stack(bootstrap: str, stack_settings: dict[str, Any], stack_tokens: dict[str, str],
                tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[str, Settings]]:
    """The demo tools served over real HTTP with a worker, in the test process, on topics of the
    module's own (one per module): its MCP URL and settings."""
    if stack_tokens:
        async with tokened_stack(bootstrap, tmp_path_factory.mktemp("tokens"), stack_tokens,
                                 **stack_settings) as stack:
            yield stack
    else:
        async with demo_stack(bootstrap, **stack_settings) as stack:
            yield stack


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[str]:
    """A PostgreSQL cluster for the session (fsync off): its URL. Skips where PostgreSQL is not
    installed; CI installs it."""
    if binaries() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    with postgres(durable=False) as url:
        yield url


@pytest.fixture
def database_url(postgres_cluster: str) -> str:
    """A new, empty database of the session's PostgreSQL cluster."""
    return new_database(postgres_cluster)


@pytest.fixture(params=["sqlite", "postgres"])
def new_store(request: pytest.FixtureRequest) -> Iterator[Callable[[], Store]]:
    """Makes empty projection stores of one kind: every store test runs on SQLite (in memory) and on
    PostgreSQL (a new database each)."""
    made: list[Store] = []

    def make() -> Store:
        if request.param == "sqlite":
            store: Store = ProjectionStore()
        else:
            store = PostgresStore(new_database(request.getfixturevalue("postgres_cluster")))
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Each phase's report, kept on the test (``item.report_call``): a fixture can tell that its test
    failed and leave what explains it in the report."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def pytest_terminal_summary(terminalreporter) -> None:
    if FIGURES:
        terminalreporter.section("figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
