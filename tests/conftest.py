"""Fixtures: a real broker for the session (embedded Tansu, or LEDGER_BOOTSTRAP) and isolated topics."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from ledger.broker import EmbeddedBroker, free_port
from ledger.log import EventLog
from ledger.settings import Settings
from ledger.topics import ensure_topics


@pytest.fixture(scope="session")
def bootstrap() -> Iterator[str]:
    external = os.environ.get("LEDGER_BOOTSTRAP")
    if external:
        yield external
        return
    with EmbeddedBroker(port=free_port()) as broker:
        yield broker.bootstrap


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
def figures(request: pytest.FixtureRequest):
    """Record a line of measured figures; they are printed at the end of the run, after the results."""
    def record(line: str) -> None:
        FIGURES.append(f"{request.node.nodeid}: {line}")
        print(line)
    return record


def pytest_terminal_summary(terminalreporter) -> None:
    if FIGURES:
        terminalreporter.section("figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
