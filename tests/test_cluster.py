"""The local Apache Kafka cluster (ledger/kafka/cluster.py, compose/local-cluster): it runs what compose
runs, as a user starts it from the command line, and keeps its data across restarts."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from ledger.contract.events import TaskCreated
from ledger.kafka.appender import EventLog
from ledger.kafka.cluster import (
    LocalCluster,
    kafka_version,
    property_name,
    read_env_file,
    secured_settings,
    shared_properties,
)
from ledger.kafka.topics import TopicError, ensure_topics
from ledger.settings import Settings
from tests.support.engine import all_events
from tests.support.factories import sample
from tests.support.stack import until

COMPOSE = Path(__file__).resolve().parent.parent / "compose"
LOCAL_CLUSTER = str(COMPOSE / "local-cluster")


def test_image_variables_become_broker_properties_as_the_image_names_them() -> None:
    assert property_name("KAFKA_MIN_INSYNC_REPLICAS") == "min.insync.replicas"
    assert property_name("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP") == "listener.security.protocol.map"
    assert property_name("KAFKA_SOME__ODD___NAME") == "some_odd-name"
    assert property_name("CLUSTER_ID") is None


def test_the_local_cluster_gets_every_setting_compose_gives_its_brokers() -> None:
    shared = read_env_file(COMPOSE / "kafka" / "cluster.env")
    expected = {property_name(k): v for k, v in shared.items() if property_name(k)}
    assert shared_properties(3) == expected
    # compose's three brokers run the version whose jars the local cluster fetches
    images = re.findall(r"image:\s*apache/kafka:(\S+)", (COMPOSE / "compose.yaml").read_text())
    assert images == [kafka_version()] * 3


def test_the_secured_local_cluster_gets_every_setting_compose_gives_its_secured_brokers(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, brokers=1, security="sasl_ssl")
    properties = cluster.properties(cluster.nodes[0])
    secured, jvm = secured_settings()
    assert secured["listener.security.protocol.map"] == "CLIENT:SASL_SSL,CONTROLLER:SASL_PLAINTEXT"
    for name, value in secured.items():  # compose's /security is the cluster's own folder
        assert properties[name] == value.replace("/security/", f"{tmp_path}/security/"), name
        assert Path(properties[name]).exists() if name.endswith(".location") else True, name
    assert jvm == "-Djava.security.auth.login.config=/security/broker-jaas.conf"
    assert cluster.secured.jvm_options(jvm) == [f"-Djava.security.auth.login.config={tmp_path}/security/broker-jaas.conf"]
    assert property_name("KAFKA_OPTS") is None  # the JVM's, as the image takes it


def test_a_smaller_cluster_keeps_only_as_many_replicas_as_it_has_brokers() -> None:
    one = shared_properties(1)
    assert one["default.replication.factor"] == "1" and one["min.insync.replicas"] == "1"
    assert one["offsets.topic.replication.factor"] == "1" and one["transaction.state.log.min.isr"] == "1"
    two = shared_properties(2)
    assert two["default.replication.factor"] == "2" and two["min.insync.replicas"] == "1"


async def test_the_running_cluster_has_the_settings_of_compose(local_cluster: LocalCluster) -> None:
    checked = ("default.replication.factor", "min.insync.replicas", "auto.create.topics.enable",
               "offsets.topic.replication.factor")
    admin = AIOKafkaAdminClient(bootstrap_servers=local_cluster.bootstrap)
    await admin.start()
    try:
        for node in local_cluster.nodes:
            response = (await admin.describe_configs(
                [ConfigResource(ConfigResourceType.BROKER, str(node.node_id), {name: None for name in checked})]))[0]
            found = {name: value for *_, configs in response.resources for name, value, *_ in configs}
            assert found == {name: shared_properties(3)[name] for name in checked}, node
    finally:
        await admin.close()


async def test_topics_get_the_brokers_replication_and_refuse_one_that_cannot_lose_a_broker(
    local_cluster: LocalCluster, settings: Settings
) -> None:
    await ensure_topics(settings)
    admin = AIOKafkaAdminClient(bootstrap_servers=local_cluster.bootstrap)
    await admin.start()
    try:
        described = (await admin.describe_topics([settings.events_topic]))[0]
        assert {len(p["replicas"]) for p in described["partitions"]} == {3}
    finally:
        await admin.close()
    thin = Settings.from_env(bootstrap=settings.bootstrap, topic_prefix=f"{settings.topic_prefix}-thin",
                             partitions=2, replication_factor=2, min_insync_replicas=2)
    await ensure_topics(thin)  # asked for explicitly: allowed, with a warning
    with pytest.raises(TopicError, match="2 replica.* min.insync.replicas 2.*LEDGER_REPLICATION_FACTOR=2"):
        await ensure_topics(Settings.from_env(bootstrap=settings.bootstrap, topic_prefix=thin.topic_prefix,
                                              partitions=2))


def start_command(directory: Path, brokers: int) -> subprocess.Popen[str]:
    return subprocess.Popen([LOCAL_CLUSTER, "--brokers", str(brokers), "--dir", str(directory)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_started(process: subprocess.Popen[str], brokers: int) -> tuple[str, dict[int, int]]:
    """The printed bootstrap and {node id: pid}, once the command says every broker answers."""
    lines = []
    while len([line for line in lines if line.startswith("broker ")]) < brokers:
        line = process.stdout.readline()
        assert line, f"local-cluster ended early: {lines}"
        lines.append(line)
    bootstrap = next(line for line in lines if line.startswith("export LEDGER_BOOTSTRAP="))
    pids = {int(m.group(1)): int(m.group(2)) for line in lines
            if (m := re.match(r"broker (\d+)\s+port \d+\s+pid (\d+)", line))}
    return bootstrap.strip().split("=", 1)[1], pids


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie waiting for its parent does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def wait_gone(pids: list[int], timeout: float) -> None:
    await until(lambda: not any(alive(pid) for pid in pids), timeout,
                lambda: f"still running: {[p for p in pids if alive(p)]}")


@pytest.mark.slow
async def test_local_cluster_as_a_user_runs_it_keeps_its_data_and_stops_every_broker(
    broker_kind: str, tmp_path: Path
) -> None:
    if broker_kind != "kafka":
        pytest.skip("starts Apache Kafka brokers: runs with --broker kafka")
    process = start_command(tmp_path, 1)
    bootstrap, pids = await asyncio.to_thread(wait_started, process, 1)
    settings = Settings.from_env(bootstrap=bootstrap, topic_prefix="kept", partitions=2)
    await ensure_topics(settings)
    async with EventLog(settings) as log:
        await log.append(sample(TaskCreated, "kept-task"))
    process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(process.wait, 60) == 0
    assert "local-cluster: stopped" in process.stdout.read()
    await wait_gone(list(pids.values()), 10)

    process = start_command(tmp_path, 1)  # again, on the same folder
    try:
        bootstrap, pids = await asyncio.to_thread(wait_started, process, 1)
        assert [e.task_id for e in await all_events(settings)] == ["kept-task"]
    finally:
        process.send_signal(signal.SIGKILL)  # a killed supervisor leaves no broker behind
        process.wait(30)
    await wait_gone(list(pids.values()), 30)


@pytest.mark.slow
def test_a_folder_of_another_size_is_a_clear_error(tmp_path: Path, broker_kind: str) -> None:
    if broker_kind != "kafka":
        pytest.skip("needs Java and the Kafka jars: runs with --broker kafka")
    LocalCluster(tmp_path, brokers=1)  # lays the folder out for one broker
    done = subprocess.run([LOCAL_CLUSTER, "--brokers", "3", "--dir", str(tmp_path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    assert "holds a 1-broker cluster; use --brokers 1 or another --dir" in done.stderr
    assert "Traceback" not in done.stderr


# The command itself, fast (no JVM): `ledger cluster` and compose/local-cluster are one tool, and the script
# finds the project's Python from a shell where no virtual environment is active.

def test_ledger_cluster_says_what_it_runs_where_the_jars_come_from_and_how_to_stop_it() -> None:
    done = subprocess.run([sys.executable, "-m", "ledger.cli.main", "cluster", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert " ".join(done.stdout.split()).startswith(
        "usage: ledger cluster [-h] [--brokers N] [--dir DIR] [--security {plaintext,sasl_ssl}] [--oauth-issuer URL] "
        "[--oauth-principal ROLE=SUBJECT] [--fetch-only]")
    for said in ("Apache Kafka", "Maven", "once", "Ctrl-C", "export LEDGER_BOOTSTRAP="):
        assert said in done.stdout
    listed = subprocess.run([sys.executable, "-m", "ledger.cli.main", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert re.search(r"^\s+cluster\s+run a local Apache Kafka cluster", listed.stdout, re.MULTILINE)


def shell_tools(folder: Path) -> Path:
    """A bin folder with bash and the few tools compose/local-cluster uses, and no Python."""
    folder.mkdir()
    for tool in ("bash", "dirname", "basename", "head", "tail"):
        found = shutil.which(tool)
        assert found, tool
        (folder / tool).symlink_to(found)
    return folder


def bare_environment(path: str) -> dict[str, str]:
    """A new user's shell: no virtual environment active, nothing but PATH and HOME."""
    return {"PATH": path, "HOME": os.environ.get("HOME", "/tmp")}


def test_local_cluster_runs_under_the_python_of_the_ledger_command_on_path(tmp_path: Path) -> None:
    venv_bin = Path(sys.executable).parent  # the `ledger` command's folder, as `pip install` made it
    assert (venv_bin / "ledger").exists()
    tools = shell_tools(tmp_path / "bin")
    done = subprocess.run(["bash", LOCAL_CLUSTER, "--help"], capture_output=True, text=True, timeout=60,
                          env=bare_environment(f"{venv_bin}:{tools}"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert " ".join(done.stdout.split()).startswith("usage: compose/local-cluster [-h] [--brokers N] [--dir DIR] "
                                                    "[--security {plaintext,sasl_ssl}] [--oauth-issuer URL] "
                                                    "[--oauth-principal ROLE=SUBJECT] [--fetch-only]")
    assert "export LEDGER_BOOTSTRAP=" in done.stdout


def test_local_cluster_without_a_python_for_ledger_says_what_to_install(tmp_path: Path) -> None:
    root = COMPOSE.parent
    if any((root / venv / "bin" / "python").exists() for venv in (".venv", "venv")):
        pytest.skip("a virtual environment at the repository's root is found from any PATH")
    tools = shell_tools(tmp_path / "bin")
    done = subprocess.run([str(tools / "bash"), LOCAL_CLUSTER, "--help"], capture_output=True, text=True,
                          timeout=60, env=bare_environment(str(tools)), cwd=tmp_path)
    assert done.returncode == 1
    assert done.stdout == ""
    message = done.stderr.strip()
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith("local-cluster: found no Python with ledger's dependencies installed")
    assert "pip install -e ." in message and "activate" in message
