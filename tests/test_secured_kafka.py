"""ledger on a secured Kafka: the local cluster with its SASL_SSL listener, SCRAM users and ACLs
(``ledger cluster --security sasl_ssl``), the roles each connecting as their own principal, the
auditor replaying without the right to append, and each everyday mistake said in one sentence."""

from __future__ import annotations

import os
import subprocess
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from ledger.kafka.broker import free_port
from ledger.kafka.cluster import LocalCluster
from ledger.kafka.profiles import KAFKA
from ledger.kafka.secured_cluster import (
    CLUSTER,
    CREATE,
    DESCRIBE,
    DESCRIBE_CONFIGS,
    PRINCIPALS,
    READ,
    TOPIC,
    WRITE,
    WRITERS,
)
from ledger.settings import Settings
from tests.support.oidc import SERVICE_CLIENT
from tests.support.raw_http import ModernClient
from tests.support.secured import SecuredCluster
from tests.support.spawn import DEMO, LEDGER, role_environment, spawned
from tests.support.stack import in_status


@pytest.fixture(scope="module")
def secured(secured_cluster: SecuredCluster) -> LocalCluster:
    return secured_cluster.cluster


@pytest.fixture(scope="module")
def issuer(secured_cluster: SecuredCluster) -> str:
    return secured_cluster.issuer


def as_role(cluster: LocalCluster, role: str, prefix: str, **changes: str) -> Settings:
    """Settings of a ``role`` principal on topics named ``prefix``.*, granted its ACLs there."""
    cluster.secured.grant(cluster.bootstrap, prefix)
    settings = Settings(bootstrap=cluster.bootstrap, topic_prefix=prefix,
                        kafka_config=str(cluster.secured.client_file(role)))
    return replace(settings, **changes)


def ledger(args: list[str], settings: Settings) -> subprocess.CompletedProcess[str]:
    return subprocess.run(LEDGER + args, capture_output=True, text=True, timeout=60, env=role_environment(settings))


async def test_the_roles_run_a_task_and_the_auditor_replays_it(secured: LocalCluster, tmp_path: Path) -> None:
    prefix = f"secured-{uuid.uuid4().hex[:8]}"
    server = as_role(secured, "server", prefix)
    port = free_port()
    with spawned(["server", DEMO, "--port", str(port)], server, "ledger server: serving"), \
            spawned(["worker", DEMO], as_role(secured, "worker", prefix), f"all {KAFKA.default_partitions} partitions read"):
        async with ModernClient(f"http://127.0.0.1:{port}/mcp") as client:
            created = await client.result("tools/call", {"name": "approve_expense",
                                                         "arguments": {"amount": 12, "description": "keys"}})
            [key] = (await in_status(client, created["taskId"], "input_required"))["inputRequests"]
            await client.result("tasks/update", {"taskId": created["taskId"], "inputResponses": {
                key: {"action": "accept", "content": {"approved": True}}}})
            await in_status(client, created["taskId"], "completed")

    auditor = as_role(secured, "auditor", prefix)
    replayed = ledger(["replay", "--store", str(tmp_path / "audit.sqlite")], auditor)
    assert replayed.returncode == 0 and "1 task" in replayed.stdout, replayed
    listed = ledger(["tasks"], auditor)
    assert created["taskId"] in listed.stdout and "completed" in listed.stdout, listed

    refused = ledger(["server", DEMO, "--port", str(port + 1)], auditor)  # reads, never appends
    assert refused.returncode == 2, refused
    last = refused.stderr.strip().splitlines()[-1]
    assert last == (f"ledger: the Kafka principal ledger-auditor may not write to {prefix}.task-events: the "
                    "brokers' ACLs refuse it (docs/operations.md, \"Connect to a managed Kafka\", lists what each "
                    "role needs)"), refused.stderr
    assert "Traceback" not in refused.stderr


def _wrong_password(cluster: LocalCluster, tmp_path: Path) -> dict[str, str]:
    return {"LEDGER_KAFKA_SASL_PASSWORD": "not-the-password"}


def _plaintext(cluster: LocalCluster, tmp_path: Path) -> dict[str, str]:
    return {"LEDGER_KAFKA_CONFIG": ""}


def _untrusted(cluster: LocalCluster, tmp_path: Path) -> dict[str, str]:
    other = tmp_path / "other-ca.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(tmp_path / "other-ca.key"), "-subj", "/CN=another CA", "-out", str(other)],
                   check=True, capture_output=True)
    return {"LEDGER_KAFKA_SSL_CA_LOCATION": str(other)}


def _mechanism_not_enabled(cluster: LocalCluster, tmp_path: Path) -> dict[str, str]:
    return {"LEDGER_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256"}


@pytest.mark.parametrize(("mistake", "said"), [
    (_wrong_password, "refused the SASL login of ledger-server with SCRAM-SHA-512: the user does not exist "
                      "there or sasl.password is wrong"),
    (_plaintext, "closed the connection on a plaintext Kafka request: if it is a TLS or SASL listener, set "
                 "security.protocol"),
    (_untrusted, "is not trusted (self-signed certificate in certificate chain): set ssl.ca.location to the CA "
                 "certificate that signed it"),
    (_mechanism_not_enabled, "does not enable SASL mechanism SCRAM-SHA-256 on this listener"),
], ids=lambda case: getattr(case, "__name__", "")[1:])
def test_an_everyday_mistake_is_one_sentence(secured: LocalCluster, tmp_path: Path, mistake, said: str) -> None:
    settings = as_role(secured, "server", f"secured-{uuid.uuid4().hex[:8]}")
    environment = {**role_environment(settings), **mistake(secured, tmp_path)}
    done = subprocess.run(LEDGER + ["topics"], capture_output=True, text=True, timeout=60, env=environment)
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and said in lines[0], done.stderr
    password = Path(settings.kafka_config).read_text().split("sasl.password=")[1].split()[0]
    assert password not in done.stderr + done.stdout


def test_a_principal_without_the_acl_is_refused_topic_creation_in_one_sentence(secured: LocalCluster) -> None:
    settings = as_role(secured, "server", "granted")
    done = ledger(["topics", "--create"], replace(settings, topic_prefix=f"ungranted-{uuid.uuid4().hex[:8]}"))
    assert done.returncode == 2, done
    [line] = done.stderr.strip().splitlines()
    assert "the Kafka principal ledger-server may not create topic ungranted-" in line, line


def test_a_principal_refused_its_reads_or_its_group_is_told_so_in_one_sentence(secured: LocalCluster,
                                                                                 tmp_path: Path) -> None:
    prefix = f"partly-{uuid.uuid4().hex[:8]}"
    writes_only = {TOPIC: (CREATE, DESCRIBE, DESCRIBE_CONFIGS, WRITE), CLUSTER: (DESCRIBE_CONFIGS,)}
    secured.secured.grant(secured.bootstrap, prefix, {
        "server": writes_only,  # appends, but may not read the log back
        "worker": {**writes_only, TOPIC: (*writes_only[TOPIC], READ)},  # no group
        "auditor": {TOPIC: (DESCRIBE,)},  # sees the topics, may not read them
    })
    settings = {role: Settings(bootstrap=secured.bootstrap, topic_prefix=prefix,
                               kafka_config=str(secured.secured.client_file(role))) for role in PRINCIPALS}
    tokens = tmp_path / "tokens"
    tokens.write_text("alice-token alice\n")
    said = {
        "server": ledger(["server", DEMO, "--port", str(free_port())], settings["server"]),
        "server with sign-in": ledger(["server", DEMO, "--port", str(free_port())],
                                      replace(settings["server"], tokens_file=str(tokens))),
        "worker": ledger(["worker", DEMO], settings["worker"]),
        "auditor": ledger(["tasks"], settings["auditor"]),
    }
    refusals = {"server": f"ledger-server may not read {prefix}.task-events",
                "server with sign-in": f"ledger-server may not read {prefix}.sign-outs",  # its sessions' topic
                "worker": f"ledger-worker may not use the consumer group {prefix}.workers",
                "auditor": f"ledger-auditor may not read {prefix}.task-events"}
    for role, done in said.items():
        assert done.returncode == 2, (role, done)
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith(f"ledger: the Kafka principal {refusals[role]}"), (role, done.stderr)
        assert "Traceback" not in done.stderr, (role, done.stderr)


def as_service(cluster: LocalCluster, issuer: str, prefix: str) -> tuple[Settings, dict[str, str]]:
    """Settings on topics ``prefix``.*, and the variables of logging in with OAUTHBEARER as the provider's
    ``ledger-service`` client (client credentials), granted a writer's ACLs there."""
    cluster.secured.grant(cluster.bootstrap, prefix, {"service": WRITERS}, principals={"service": SERVICE_CLIENT[0]})
    return Settings(bootstrap=cluster.bootstrap, topic_prefix=prefix), oauthbearer(cluster.secured.ca, issuer)


def oauthbearer(ca: Path, issuer: str) -> dict[str, str]:
    """The variables of logging in with OAUTHBEARER as the provider's ``ledger-service`` client."""
    return {"LEDGER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "LEDGER_KAFKA_SASL_MECHANISM": "OAUTHBEARER",
            "LEDGER_KAFKA_SSL_CA_LOCATION": str(ca), "LEDGER_KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL": f"{issuer}/token",
            "LEDGER_KAFKA_SASL_OAUTHBEARER_CLIENT_ID": SERVICE_CLIENT[0],
            "LEDGER_KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET": SERVICE_CLIENT[1]}


async def test_roles_log_in_with_oauthbearer_tokens_of_the_client_credentials_grant(secured: LocalCluster,
                                                                                  issuer: str) -> None:
    prefix = f"oauth-{uuid.uuid4().hex[:8]}"
    settings, oauth = as_service(secured, issuer, prefix)
    port = free_port()
    with spawned(["server", DEMO, "--port", str(port)], settings, "ledger server: serving", env=oauth) as server, \
            spawned(["worker", DEMO], settings, f"all {KAFKA.default_partitions} partitions read", env=oauth):
        assert "SASL_SSL, OAUTHBEARER as ledger-service" in "".join(server.banner), server.banner
        async with ModernClient(f"http://127.0.0.1:{port}/mcp") as client:
            created = await client.result("tools/call", {"name": "approve_expense",
                                                         "arguments": {"amount": 3, "description": "pens"}})
            [key] = (await in_status(client, created["taskId"], "input_required"))["inputRequests"]
            await client.result("tasks/update", {"taskId": created["taskId"], "inputResponses": {
                key: {"action": "accept", "content": {"approved": True}}}})
            await in_status(client, created["taskId"], "completed")


@pytest.mark.parametrize(("change", "said"), [
    ({"LEDGER_KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET": "not-the-secret"},
     "refused the client credentials of ledger-service (invalid_client)"),
    ({"LEDGER_KAFKA_SASL_OAUTHBEARER_TOKEN_PROVIDER": "tests.support.oidc:TokensForAnotherAudience"},
     "refused the OAUTHBEARER token from tests.support.oidc:TokensForAnotherAudience: it does not trust its issuer "
     "or signature, or expects another audience or scope"),
], ids=["wrong client secret", "token for another audience"])
def test_an_oauthbearer_mistake_is_one_sentence(secured: LocalCluster, issuer: str, change: dict[str, str],
                                                said: str) -> None:
    settings, oauth = as_service(secured, issuer, f"oauth-{uuid.uuid4().hex[:8]}")
    environment = {**role_environment(settings), **oauth, **change}
    done = subprocess.run(LEDGER + ["topics"], capture_output=True, text=True, timeout=60, env=environment)
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and said in lines[0], done.stderr
    assert "not-the-secret" not in done.stderr and SERVICE_CLIENT[1] not in done.stderr


def test_the_cluster_command_grants_an_issuers_service_its_role(secured_cluster: SecuredCluster) -> None:
    said = secured_cluster.said
    assert any(f"{SERVICE_CLIENT[0]} has the ACLs of a ledger server" in line for line in said), said
    bootstrap = next(line for line in said if line.startswith("export LEDGER_BOOTSTRAP=")).strip().split("=")[1]
    assert bootstrap == secured_cluster.cluster.bootstrap
    environment = {**os.environ, "LEDGER_BOOTSTRAP": bootstrap, "LEDGER_TOPIC_PREFIX": secured_cluster.prefix,
                   **oauthbearer(secured_cluster.cluster.secured.ca, secured_cluster.issuer)}
    created = subprocess.run([*LEDGER, "topics", "--create"], capture_output=True, text=True, timeout=120,
                             env=environment)
    assert created.returncode == 0, created.stderr
