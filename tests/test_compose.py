"""The compose cluster, without Docker: the file is valid Compose, has the shape the cluster needs,
and every ledger service in it runs, as a local process with the command and environment the
file gives it, against the session's broker (the local Apache Kafka cluster with --broker kafka),
behind a round-robin entry point standing in for nginx, and serves approve_expense end to end."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from compose_spec import PyCompose
from cryptography import x509

from ledger.kafka.broker import free_port
from ledger.kafka.cluster import read_env_file
from tests.support.proxy import round_robin
from tests.support.raw_http import ModernClient
from tests.support.secured import SecuredCluster
from tests.support.spawn import LEDGER, drain, wait_for_line
from tests.support.stack import approve_through_tasks

COMPOSE = Path(__file__).resolve().parent.parent / "compose"


def compose() -> dict[str, Any]:
    return PyCompose.from_yaml((COMPOSE / "compose.yaml").read_text()).to_dict()


def interpolate(value: str, variables: Mapping[str, str] | None = None) -> str:
    """Compose's ${NAME:-default} and ${NAME:+alternative}, from ``variables`` (else this process's
    environment)."""
    variables = os.environ if variables is None else variables

    def value_of(match: re.Match[str]) -> str:
        name, operator, word = match.groups()
        if operator == ":-":
            return variables.get(name) or word
        return word if variables.get(name) else ""
    return re.sub(r"\$\{(\w+)(:-|:\+)([^}]*)\}", value_of, value)


def test_the_file_is_valid_compose_with_the_cluster_it_promises() -> None:
    services = compose()["services"]
    brokers = [s for name, s in services.items() if re.fullmatch(r"kafka-\d+", name)]
    assert len(brokers) == 3
    shared = read_env_file(COMPOSE / "kafka" / "cluster.env")
    assert shared["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert shared["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3" and shared["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
    assert shared["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    for broker in brokers:
        assert re.fullmatch(r"apache/kafka:\d+\.\d+\.\d+", broker["image"]), "pinned official image"
        assert broker["env_file"] == ["kafka/cluster.env", "kafka/${LEDGER_KAFKA_SECURITY:-plaintext}.env"]
        assert broker["depends_on"]["kafka-security"]["condition"] == "service_completed_successfully"
        assert "KAFKA_ZOOKEEPER_CONNECT" not in broker["environment"]
        assert not set(broker["environment"]) & set(shared), "each setting comes from one place"
        assert "healthcheck" in broker
    assert set(services["kafka-users"]["depends_on"]) == {"kafka-1", "kafka-2", "kafka-3"}
    assert set(services["topics"]["depends_on"]) == {"kafka-users"}
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


def local(service: dict[str, Any], bootstrap: str, prefix: str, scratch: Path, secrets: dict[str, Any],
          database_url: str, variables: Mapping[str, str] | None = None,
          security: Path | None = None) -> tuple[list[str], dict[str, str]]:
    """The service's command and environment, made to run here: Kafka is the session's broker, the
    database one of the session's PostgreSQL, secrets and volumes are local files (the kafka-security
    volume ``security``), and the HTTP port a free one; compose's variables are ``variables``."""
    environment = {key: interpolate(str(value), variables) for key, value in service["environment"].items()}
    environment["LEDGER_BOOTSTRAP"] = bootstrap
    if "LEDGER_DATABASE_URL" in environment:
        environment["LEDGER_DATABASE_URL"] = database_url
    environment["LEDGER_TOPIC_PREFIX"] = prefix  # the session's broker is shared with other tests
    for key, value in environment.items():
        if value.startswith("/run/secrets/"):
            environment[key] = str(COMPOSE / secrets[value.removeprefix("/run/secrets/")]["file"])
        elif value.startswith("/data/"):
            environment[key] = str(scratch / value.removeprefix("/data/"))
        elif value.startswith("/security/") and security is not None:
            environment[key] = str(security / value.removeprefix("/security/"))
    command = list(service["command"])
    for option in ("--port", "--metrics-port"):
        if option in command:
            command[command.index(option) + 1] = str(free_port())
    return command, environment


def start_services(names: list[str], spec: dict[str, Any], running: ExitStack, tmp_path: Path,
                   outputs: dict[str, tuple[list[str], deque[str]]] | None = None, **where: Any) -> list[str]:
    """``topics`` run to its end, then the services ``names`` running as local processes (``where``:
    local's arguments; ``outputs`` gets what each printed until ready and its last lines since); the
    servers' URLs."""
    services = spec["services"]
    command, environment = local(services["topics"], scratch=tmp_path, secrets=spec["secrets"], **where)
    created = subprocess.run(LEDGER + command[1:], env={**os.environ, **environment}, capture_output=True,
                             text=True, timeout=120)
    assert created.returncode == 0, created.stderr
    urls = []
    for name in names:
        scratch = tmp_path / name
        scratch.mkdir()
        command, environment = local(services[name], scratch=scratch, secrets=spec["secrets"], **where)
        process = subprocess.Popen(LEDGER + command[1:], env={**os.environ, **environment},
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        running.callback(lambda p=process: (p.kill(), p.wait(30)))
        banner = wait_for_line(process, {"server": "serving", "worker": "ledger worker",
                                         "projector": "ledger projector"}[name.split("-")[0]], timeout=90)
        tail = drain(process)
        if outputs is not None:
            outputs[name] = (banner, tail)
        if name.startswith("server"):
            urls.append(f"http://127.0.0.1:{command[command.index('--port') + 1]}")
    return urls


@pytest.fixture
def cluster(bootstrap: str, tmp_path: Path, database_url: str, request: pytest.FixtureRequest) -> Iterator[list[str]]:
    """Every ledger service of the file running as a local process; yields the servers' URLs. When the
    test fails, what each service printed last is printed for the report."""
    outputs: dict[str, tuple[list[str], deque[str]]] = {}
    with ExitStack() as running:
        yield start_services(["projector-1", "projector-2", "worker-1", "worker-2", "server-1", "server-2"], compose(),
                             running, tmp_path, outputs, bootstrap=bootstrap, prefix=f"compose-{uuid.uuid4().hex[:8]}",
                             database_url=database_url)
        if getattr(request.node, "report_call", None) is None or request.node.report_call.failed:
            for name, (banner, tail) in outputs.items():
                print(f"--- output of {name} ---\n", *banner, *tail, sep="", file=sys.stderr)


def token() -> str:
    return next(line.split()[0] for line in (COMPOSE / "tokens.example").read_text().splitlines()
                if line and not line.startswith("#"))


@pytest.mark.slow
async def test_approve_expense_through_the_entry_point(cluster: list[str]) -> None:
    async with round_robin(cluster) as (entry, served):
        async with ModernClient(f"{entry}/mcp", token=token()) as client:
            _, text = await approve_through_tasks(client, 12, "cluster")
            assert text == "approved 12"
    assert all(count > 0 for count in served.values()), served  # both servers answered


SECURED = {**os.environ, "LEDGER_KAFKA_SECURITY": "sasl_ssl"}  # what compose/secured.env sets


def one_shot(service: dict[str, Any], folder: Path, variables: Mapping[str, str], bootstrap: str = "",
             **environment: str) -> subprocess.CompletedProcess[str]:
    """A ``python -m ledger.kafka.secured_cluster`` one-shot of the file, with ``folder`` as the volume
    (and ``bootstrap`` as the brokers)."""
    command = [interpolate(part, variables) for part in service["command"]]
    if "--bootstrap" in command:
        command[command.index("--bootstrap") + 1] = bootstrap
    command[3:3] = ["--dir", str(folder)]  # python -m MODULE [--dir FOLDER] ...
    return subprocess.run([sys.executable, *command[1:]], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **environment})


def test_the_secured_mode_is_one_variable_of_its_env_file(tmp_path: Path) -> None:
    assert read_env_file(COMPOSE / "secured.env") == {"LEDGER_KAFKA_SECURITY": "sasl_ssl"}
    services = compose()["services"]
    plaintext = one_shot(services["kafka-security"], tmp_path / "plaintext", {})
    assert plaintext.returncode == 0 and "nothing to do" in plaintext.stdout and not (tmp_path / "plaintext").exists()
    made = one_shot(services["kafka-security"], tmp_path / "secured", SECURED)
    assert made.returncode == 0, made.stderr
    certificate = x509.load_pem_x509_certificate((tmp_path / "secured" / "broker.crt").read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["kafka-1", "kafka-2", "kafka-3", "localhost"]
    for name in ("broker.pem", "broker-jaas.conf", "admin.properties", "server.properties", "passwords.json"):
        assert (tmp_path / "secured" / name).stat().st_mode & 0o777 == 0o600, name
    broker = services["kafka-1"]
    assert [interpolate(path, SECURED) for path in broker["env_file"]] == ["kafka/cluster.env", "kafka/sasl_ssl.env"]
    assert "--command-config /security/admin.properties" in interpolate(broker["healthcheck"]["test"], SECURED)
    assert "--command-config" not in interpolate(broker["healthcheck"]["test"], {})
    for name, role in (("topics", "server"), ("server-1", "server"), ("worker-1", "worker"), ("projector-1", "server")):
        assert interpolate(services[name]["environment"]["LEDGER_KAFKA_CONFIG"], SECURED) == f"/security/{role}.properties"
        assert interpolate(services[name]["environment"]["LEDGER_KAFKA_CONFIG"], {}) == ""


@pytest.mark.slow
async def test_the_secured_mode_serves_approve_expense_as_its_principals(secured_cluster: SecuredCluster,
                                                                         tmp_path: Path, database_url: str) -> None:
    spec = compose()
    prefix = f"secured-{uuid.uuid4().hex[:8]}"
    # The session's secured local cluster, from the same sasl_ssl.env, stands in for kafka-1..3; its folder
    # for the kafka-security volume.
    brokers = secured_cluster.cluster
    volume = brokers.secured.folder
    users = one_shot(spec["services"]["kafka-users"], volume, SECURED, brokers.bootstrap, LEDGER_TOPIC_PREFIX=prefix)
    assert users.returncode == 0 and f"with ACLs on {prefix}.*" in users.stdout, users.stderr
    with ExitStack() as running:
        url, = start_services(["worker-1", "server-1"], spec, running, tmp_path, bootstrap=brokers.bootstrap,
                              prefix=prefix, database_url=database_url, variables=SECURED, security=volume)
        async with ModernClient(f"{url}/mcp", token=token()) as client:
            _, text = await approve_through_tasks(client, 13, "secured")
            assert text == "approved 13"
