"""The compose cluster, without Docker: the file is valid Compose, has the shape the cluster needs,
and every ledger service in it runs, as a local process with the command and environment the
file gives it, against the session's broker (the local Apache Kafka cluster with --broker kafka),
behind a round-robin entry point standing in for nginx, and serves approve_expense end to end."""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from compose_spec import PyCompose

from ledger.kafka.broker import free_port
from ledger.kafka.cluster import read_env_file
from tests.support.proxy import round_robin
from tests.support.raw_http import ModernClient
from tests.support.spawn import LEDGER, drain, wait_for_line
from tests.support.stack import approve_through_tasks

COMPOSE = Path(__file__).resolve().parent.parent / "compose"


def compose() -> dict[str, Any]:
    return PyCompose.from_yaml((COMPOSE / "compose.yaml").read_text()).to_dict()


def interpolate(value: str) -> str:
    """Compose's ${NAME:-default}, from this process's environment."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: os.environ.get(m.group(1), m.group(2)), value)


def test_the_file_is_valid_compose_with_the_cluster_it_promises() -> None:
    services = compose()["services"]
    brokers = [s for name, s in services.items() if name.startswith("kafka-")]
    assert len(brokers) == 3
    shared = read_env_file(COMPOSE / "kafka" / "cluster.env")
    assert shared["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert shared["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3" and shared["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
    assert shared["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    for broker in brokers:
        assert re.fullmatch(r"apache/kafka:\d+\.\d+\.\d+", broker["image"]), "pinned official image"
        assert broker["env_file"] == "kafka/cluster.env"
        assert "KAFKA_ZOOKEEPER_CONNECT" not in broker["environment"]
        assert not set(broker["environment"]) & set(shared), "each setting comes from one place"
        assert "healthcheck" in broker
    assert set(services["topics"]["depends_on"]) == {"kafka-1", "kafka-2", "kafka-3"}
    ledger_services = {name: s for name, s in services.items() if s.get("command", [""])[0] == "ledger"}
    assert sorted(ledger_services) == ["projector-1", "projector-2", "server-1", "server-2", "topics", "worker-1",
                                       "worker-2"]
    for name, service in ledger_services.items():
        assert service["environment"]["LEDGER_REPLICATION_FACTOR"] == "3", name
        if name != "topics":
            assert service["depends_on"]["topics"]["condition"] == "service_completed_successfully", name
    assert {c["condition"] for c in services["entry"]["depends_on"].values()} == {"service_healthy"}
    assert all("healthcheck" in services[f"{role}-{n}"] for n in (1, 2) for role in ("server", "worker"))
    database = services["postgres"]["environment"]
    for name, service in ledger_services.items():
        if name != "topics":  # every role shares the database the projectors keep
            assert interpolate(service["environment"]["LEDGER_DATABASE_URL"]) == (
                f"postgresql://{database['POSTGRES_USER']}:{interpolate(database['POSTGRES_PASSWORD'])}"
                f"@postgres:5432/{database['POSTGRES_DB']}"), name
            assert service["depends_on"]["postgres"]["condition"] == "service_healthy", name


def local(service: dict[str, Any], bootstrap: str, prefix: str, scratch: Path,
          secrets: dict[str, Any], database_url: str) -> tuple[list[str], dict[str, str]]:
    """The service's command and environment, made to run here: Kafka is the session's broker, the
    database one of the session's PostgreSQL, secrets and volumes are local files, and the HTTP port a
    free one."""
    environment = {key: interpolate(str(value)) for key, value in service["environment"].items()}
    environment["LEDGER_BOOTSTRAP"] = bootstrap
    if "LEDGER_DATABASE_URL" in environment:
        environment["LEDGER_DATABASE_URL"] = database_url
    environment["LEDGER_TOPIC_PREFIX"] = prefix  # the session's broker is shared with other tests
    for key, value in environment.items():
        if value.startswith("/run/secrets/"):
            environment[key] = str(COMPOSE / secrets[value.removeprefix("/run/secrets/")]["file"])
        elif value.startswith("/data/"):
            environment[key] = str(scratch / value.removeprefix("/data/"))
    command = list(service["command"])
    for option in ("--port", "--metrics-port"):
        if option in command:
            command[command.index(option) + 1] = str(free_port())
    return command, environment


@pytest.fixture
def cluster(bootstrap: str, tmp_path: Path, database_url: str) -> Iterator[list[str]]:
    """Every ledger service of the file running as a local process; yields the servers' URLs."""
    spec = compose()
    services = spec["services"]
    prefix = f"compose-{uuid.uuid4().hex[:8]}"
    with ExitStack() as running:
        command, environment = local(services["topics"], bootstrap, prefix, tmp_path, spec["secrets"], database_url)
        created = subprocess.run(LEDGER + command[1:], env={**os.environ, **environment}, capture_output=True,
                                 text=True, timeout=120)
        assert created.returncode == 0, created.stderr
        urls = []
        for name in ("projector-1", "projector-2", "worker-1", "worker-2", "server-1", "server-2"):
            scratch = tmp_path / name
            scratch.mkdir()
            command, environment = local(services[name], bootstrap, prefix, scratch, spec["secrets"], database_url)
            process = subprocess.Popen(LEDGER + command[1:], env={**os.environ, **environment},
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            running.callback(lambda p=process: (p.kill(), p.wait(30)))
            wait_for_line(process, {"server": "serving", "worker": "ledger worker", "projector": "ledger projector"}[
                name.split("-")[0]], timeout=90)
            drain(process)
            if name.startswith("server"):
                urls.append(f"http://127.0.0.1:{command[command.index('--port') + 1]}")
        yield urls


@pytest.mark.slow
async def test_approve_expense_through_the_entry_point(cluster: list[str]) -> None:
    token = next(line.split()[0] for line in (COMPOSE / "tokens.example").read_text().splitlines()
                 if line and not line.startswith("#"))
    async with round_robin(cluster) as (entry, served):
        async with ModernClient(f"{entry}/mcp", token=token) as client:
            _, text = await approve_through_tasks(client, 12, "cluster")
            assert text == "approved 12"
    assert all(count > 0 for count in served.values()), served  # both servers answered
