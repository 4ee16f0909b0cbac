"""A local Apache Kafka cluster of JVM processes, as compose runs it, for anyone with Java but no Docker.

``ledger cluster`` (``compose/local-cluster`` runs the same code) runs it from the command line;
tests and benchmarks drive the same ``LocalCluster`` from Python (start, kill and restart one broker,
stop). Each broker is a combined broker + KRaft controller started from Apache Kafka's own jars,
which Maven fetches once (the version of the apache/kafka image in ``compose/compose.yaml``) into a
cache. The settings every
broker shares come from ``compose/kafka/cluster.env``, the file compose gives its brokers.

A cluster lives in a folder: its layout (cluster id, ports, Kafka version) in ``cluster.json`` and
one ``node-N`` folder per broker with its properties, data and ``broker.log``. Started again on the
same folder, it comes back with its data on the same ports.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ledger.kafka.broker import answers_metadata, die_with_parent, free_port, freeze, port_is_free
from ledger.kafka.secured_cluster import GRANTS, KAFKA_AUDIENCE, PRINCIPALS, ClusterSecurity

HOST = "127.0.0.1"
COMPOSE_DIR = Path(__file__).resolve().parents[2] / "compose"
INSTALLED_COMPOSE_DIR = Path(__file__).resolve().parents[1] / "_compose"
# Sized for a small machine (2 cores): a broker idles in well under 512 MB of heap.
JVM_OPTIONS = ["-Xms128m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:+ExitOnOutOfMemoryError",
               "-Djava.awt.headless=true"]
# Per-broker sizing beside the shared settings: fewer threads than Kafka's defaults, for 2 cores.
LOCAL_PROPERTIES = {
    "num.network.threads": "2",
    "num.io.threads": "4",
    "num.recovery.threads.per.data.dir": "1",
    "log.cleaner.threads": "1",
}
# The replication settings a cluster of fewer brokers than they name cannot honour (see shared_properties).
REPLICA_COUNTS = ("default.replication.factor", "offsets.topic.replication.factor",
                  "transaction.state.log.replication.factor")
REPLICA_MINIMUMS = ("min.insync.replicas", "transaction.state.log.min.isr")
STOP_TIMEOUT_S = 30.0
SECURITY = ("plaintext", "sasl_ssl")
# The apache/kafka image's variables that are the JVM's, not broker properties.
JVM_VARIABLES = frozenset({"KAFKA_OPTS", "KAFKA_HEAP_OPTS", "KAFKA_JVM_PERFORMANCE_OPTS", "KAFKA_GC_LOG_OPTS",
                           "KAFKA_LOG4J_OPTS", "KAFKA_JMX_OPTS", "KAFKA_JMX_PORT", "KAFKA_JMX_HOSTNAME",
                           "KAFKA_VERSION", "KAFKA_LOG4J_ROOT_LOGLEVEL", "KAFKA_LOG4J_LOGGERS",
                           "KAFKA_TOOLS_LOG4J_LOGLEVEL"})


class ClusterError(RuntimeError):
    """The local cluster cannot be set up or started; the message says why and what to do."""


def compose_dir() -> Path:
    for candidate in (COMPOSE_DIR, INSTALLED_COMPOSE_DIR):
        if (candidate / "kafka" / "cluster.env").is_file():
            return candidate
    raise ClusterError(f"compose/kafka/cluster.env not found in {COMPOSE_DIR} or {INSTALLED_COMPOSE_DIR}")


def kafka_version(compose: Path | None = None) -> str:
    """The Kafka version compose runs: the tag of the apache/kafka image, the same on every broker."""
    text = ((compose or compose_dir()) / "compose.yaml").read_text()
    versions = set(re.findall(r"image:\s*apache/kafka:(\d+\.\d+\.\d+)\s*$", text, re.MULTILINE))
    if len(versions) != 1:
        raise ClusterError(f"compose.yaml must run one apache/kafka version on every broker, found {sorted(versions)}")
    return versions.pop()


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, as compose reads an env_file (blank lines and # comments skipped)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def property_name(variable: str) -> str | None:
    """The broker property an apache/kafka image environment variable sets (None: not a property)."""
    if not variable.startswith("KAFKA_") or variable in JVM_VARIABLES:
        return None
    name = variable.removeprefix("KAFKA_").lower()
    return name.replace("___", "-").replace("__", "\0").replace("_", ".").replace("\0", "_")


def shared_properties(brokers: int, compose: Path | None = None) -> dict[str, str]:
    """The properties of cluster.env for a cluster of ``brokers`` brokers.

    A cluster of fewer than three brokers cannot keep three replicas: its replica counts become the
    number of brokers and its minimums one less (at least one), so that it can still be written.
    """
    environment = read_env_file((compose or compose_dir()) / "kafka" / "cluster.env")
    properties = {name: value for variable, value in environment.items() if (name := property_name(variable))}
    for name in REPLICA_COUNTS:
        if name in properties:
            properties[name] = str(min(int(properties[name]), brokers))
    for name in REPLICA_MINIMUMS:
        if name in properties:
            properties[name] = str(min(int(properties[name]), max(1, brokers - 1)))
    return properties


def secured_settings(compose: Path | None = None) -> tuple[dict[str, str], str]:
    """sasl_ssl.env's broker properties, and its KAFKA_OPTS (the brokers' JVM options)."""
    environment = read_env_file((compose or compose_dir()) / "kafka" / "sasl_ssl.env")
    properties = {name: value for variable, value in environment.items() if (name := property_name(variable))}
    return properties, environment.get("KAFKA_OPTS", "")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ledger" / "kafka"


def fetch_jars(version: str, *, quiet: bool = False) -> Path:
    """The folder of the broker's jars for ``version``, fetched with Maven on first use (cached)."""
    libs = cache_dir() / version / "libs"
    if libs.is_dir() and any(libs.glob("kafka_2.13-*.jar")):
        return libs
    maven = shutil.which("mvn")
    if maven is None:
        raise ClusterError("Maven (mvn) is needed once to fetch Apache Kafka's jars and is not on PATH")
    if not quiet:
        print(f"fetching Apache Kafka {version}'s jars with Maven into {libs.parent} (once: later runs use them)",
              flush=True)
    libs.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="libs-", dir=libs.parent))
    pom = compose_dir() / "kafka" / "pom.xml"
    log = libs.parent / "maven.log"
    command = [maven, "-B", "-q", "-f", str(pom), f"-Dkafka.version={version}", "dependency:copy-dependencies",
               f"-DoutputDirectory={staging}", "-DincludeScope=runtime"]
    try:
        with open(log, "w") as output:
            done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)
    except BaseException:  # Ctrl-C, or Maven cannot be started
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if done.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
        shutil.rmtree(staging, ignore_errors=True)
        raise ClusterError(f"Maven could not fetch Apache Kafka {version}'s jars (exit status {done.returncode}; "
                           f"its output is in {log}): check that this machine reaches Maven Central")
    log.unlink(missing_ok=True)
    try:
        staging.rename(libs)
    except OSError:  # another process finished first; its copy is as good
        shutil.rmtree(staging, ignore_errors=True)
    return libs


def java_command() -> str:
    """A java of version 17 or newer (Kafka 4's broker needs 17): JAVA_HOME's, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if java is None or not Path(java).exists():
        raise ClusterError("Java 17 or newer is needed to run Apache Kafka; none found (set JAVA_HOME or PATH)")
    try:
        version = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    except OSError as exc:
        raise ClusterError(f"{java} cannot run ({exc.strerror}); Apache Kafka needs Java 17 or newer "
                           "(set JAVA_HOME or PATH)") from None
    found = re.search(r'version "(\d+)', version)
    if found is None or int(found.group(1)) < 17:
        raise ClusterError(f"Apache Kafka 4 needs Java 17 or newer; {java} is: {version.strip().splitlines()[0]}")
    return java


@dataclass(frozen=True, slots=True)
class Node:
    node_id: int
    port: int
    controller_port: int


@dataclass(frozen=True, slots=True)
class Layout:
    """What a cluster folder holds across restarts: ports must not change, the quorum names them."""

    cluster_id: str
    version: str
    nodes: tuple[Node, ...]
    security: str = "plaintext"

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"cluster_id": self.cluster_id, "version": self.version,
                                    "nodes": [asdict(node) for node in self.nodes], "security": self.security},
                                   indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Layout:
        data = json.loads(path.read_text())
        return cls(data["cluster_id"], data["version"], tuple(Node(**node) for node in data["nodes"]),
                   data.get("security", "plaintext"))


class LocalCluster:
    """N combined broker + controller JVMs on loopback, their data in ``directory``.

    ``start()`` formats storage on first use and returns once every broker answers and sees all
    the others. Processes are started from the calling thread and die with it (Linux), so a killed
    supervisor leaves no broker behind: call start and restart from a thread that outlives them.
    """

    def __init__(self, directory: Path | str, brokers: int = 3, *, quiet: bool = True,
                 overrides: dict[str, str] | None = None, security: str = "plaintext",
                 oauth_issuer: str | None = None) -> None:
        if brokers < 1:
            raise ClusterError(f"a cluster needs at least one broker, not {brokers}")
        if security not in SECURITY:
            raise ClusterError(f"--security must be one of {', '.join(SECURITY)}, not {security!r}")
        if oauth_issuer is not None and security != "sasl_ssl":
            raise ClusterError("an OAuth issuer's tokens need the SASL_SSL listener: use --security sasl_ssl")
        self.directory = Path(directory).resolve()
        self.brokers = brokers
        self.security = security
        self.quiet = quiet
        self.overrides = dict(overrides or {})  # broker properties over cluster.env's (benchmarks)
        self.version = kafka_version()
        self.layout = self._layout()
        self._java = java_command()
        self._libs: Path | None = None
        self._processes: dict[int, subprocess.Popen[bytes]] = {}
        # The SASL_SSL listener's certificates, users and ACLs (secured_cluster), else None.
        self.secured: ClusterSecurity | None = None
        self._secured_properties, self._secured_jvm = secured_settings() if security == "sasl_ssl" else ({}, "")
        if security == "sasl_ssl":
            self.secured = ClusterSecurity(self.directory / "security", oauth_issuer)
            try:
                self.secured.prepare()
            except (RuntimeError, OSError) as exc:
                raise ClusterError(f"cannot make the cluster's certificates and users: {exc}") from None

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{HOST}:{node.port}" for node in self.layout.nodes)

    @property
    def nodes(self) -> tuple[Node, ...]:
        return self.layout.nodes

    def node(self, node_id: int) -> Node:
        return next(node for node in self.layout.nodes if node.node_id == node_id)

    def pid(self, node_id: int) -> int | None:
        process = self._processes.get(node_id)
        return process.pid if process is not None and process.poll() is None else None

    def running(self) -> list[int]:
        return [node.node_id for node in self.layout.nodes if self.pid(node.node_id) is not None]

    def _layout(self) -> Layout:
        path = self.directory / "cluster.json"
        if path.exists():
            layout = Layout.load(path)
            if len(layout.nodes) != self.brokers:
                raise ClusterError(f"{self.directory} holds a {len(layout.nodes)}-broker cluster; use --brokers "
                                   f"{len(layout.nodes)} or another --dir")
            if layout.version != self.version:
                raise ClusterError(f"{self.directory} holds data of Apache Kafka {layout.version}, but compose runs "
                                   f"{self.version}; remove the folder or use another --dir")
            if layout.security != self.security:
                raise ClusterError(f"{self.directory} holds a {layout.security} cluster; use --security "
                                   f"{layout.security} or another --dir")
            return layout
        self.directory.mkdir(parents=True, exist_ok=True)
        ports = set()
        while len(ports) < 2 * self.brokers:
            ports.add(free_port(HOST))
        ports_in_order = sorted(ports)
        nodes = tuple(Node(i + 1, ports_in_order[2 * i], ports_in_order[2 * i + 1]) for i in range(self.brokers))
        layout = Layout(read_env_file(compose_dir() / "kafka" / "cluster.env")["CLUSTER_ID"], self.version, nodes,
                        self.security)
        layout.save(path)
        return layout

    def properties(self, node: Node) -> dict[str, str]:
        voters = ",".join(f"{n.node_id}@{HOST}:{n.controller_port}" for n in self.layout.nodes)
        return {
            **shared_properties(self.brokers),
            **LOCAL_PROPERTIES,
            **(self.secured.broker_properties(self._secured_properties) if self.secured is not None else {}),
            "node.id": str(node.node_id),
            "listeners": f"CLIENT://{HOST}:{node.port},CONTROLLER://{HOST}:{node.controller_port}",
            "advertised.listeners": f"CLIENT://{HOST}:{node.port}",
            "controller.quorum.voters": voters,
            "log.dirs": str(self.data_dir(node.node_id)),
            **self.overrides,
        }

    def data_dir(self, node_id: int) -> Path:
        """Where a broker keeps its logs (its ``log.dirs``), the KRaft metadata log included."""
        return self._node_dir(self.node(node_id)) / "data"

    def _node_dir(self, node: Node) -> Path:
        return self.directory / f"node-{node.node_id}"

    def _prepare(self, node: Node) -> Path:
        """Write the node's properties; format its storage unless it holds data already."""
        folder = self._node_dir(node)
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "server.properties"
        config.write_text("".join(f"{key}={value}\n" for key, value in sorted(self.properties(node).items())))
        if not (folder / "data" / "meta.properties").exists():
            formatted = subprocess.run(
                self._jvm("kafka.tools.StorageTool") + ["format", "--ignore-formatted", "-t",
                                                        self.layout.cluster_id, "-c", str(config)],
                stdin=subprocess.DEVNULL, capture_output=True, text=True)
            if formatted.returncode != 0:
                log = folder / "format.log"
                log.write_text(formatted.stdout + formatted.stderr)
                raise ClusterError(f"formatting broker {node.node_id}'s storage failed; see {log}")
        return config

    def _jvm(self, main_class: str) -> list[str]:
        if self._libs is None:
            self._libs = fetch_jars(self.version, quiet=self.quiet)
        logging = compose_dir() / "kafka" / "log4j2.properties"
        security = self.secured.jvm_options(self._secured_jvm) if self.secured is not None else []
        return [self._java, *JVM_OPTIONS, *security, f"-Dlog4j2.configurationFile={logging}", "-cp",
                f"{self._libs}/*", main_class]

    def start(self, timeout: float = 120.0) -> None:
        """Start every broker that is not running and wait until the cluster answers."""
        for node in self.layout.nodes:
            if self.pid(node.node_id) is None:
                self.launch(node.node_id)
        self.wait_ready(timeout)
        if self.secured is not None:
            self.secured.create_users(self.bootstrap)

    def launch(self, node_id: int) -> None:
        """Start one broker on its data (formatting it first if new); does not wait for it."""
        node = self.node(node_id)
        if not port_is_free(HOST, node.port) or not port_is_free(HOST, node.controller_port):
            raise ClusterError(f"broker {node_id}'s ports {node.port}/{node.controller_port} are in use: is this "
                               f"cluster ({self.directory}) already running?")
        config = self._prepare(node)
        output = open(self._node_dir(node) / "broker.log", "ab")
        try:
            self._processes[node_id] = subprocess.Popen(
                self._jvm("kafka.Kafka") + [str(config)], stdin=subprocess.DEVNULL, stdout=output,
                stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        finally:
            output.close()

    def wait_ready(self, timeout: float = 120.0, nodes: list[int] | None = None) -> None:
        """Return once each running broker (or each of ``nodes``) answers and sees all of them registered."""
        deadline = time.monotonic() + timeout
        waiting = list(nodes or self.running())
        while waiting:
            for node_id in list(waiting):
                process = self._processes.get(node_id)
                if process is None or process.poll() is not None:
                    raise ClusterError(f"broker {node_id} exited while starting; see "
                                       f"{self._node_dir(self.node(node_id)) / 'broker.log'}")
                if self._answers(self.node(node_id).port, len(self.running())):
                    waiting.remove(node_id)
            if waiting and time.monotonic() > deadline:
                raise ClusterError(f"brokers {waiting} did not answer within {timeout:.0f} s")
            if waiting:
                time.sleep(0.2)

    def _answers(self, port: int, expect_brokers: int) -> bool:
        if self.secured is not None:
            return self.secured.answers(f"{HOST}:{port}", expect_brokers)
        return answers_metadata(HOST, port, expect_brokers=expect_brokers)

    def kill(self, node_id: int) -> None:
        """SIGKILL one broker, as a crash would."""
        process = self._processes.pop(node_id, None)
        if process is not None:
            process.kill()
            process.wait()

    def freeze(self, node_id: int) -> None:
        """SIGSTOP one broker: its sockets stay open and it answers nothing (a gray failure)."""
        freeze(self._processes[node_id].pid)

    def thaw(self, node_id: int) -> None:
        self._processes[node_id].send_signal(signal.SIGCONT)

    def active_controller(self) -> int | None:
        """The node leading the KRaft quorum, as the newest quorum state a running node wrote says."""
        states = []
        for node_id in self.running():
            state_file = self.data_dir(node_id) / "__cluster_metadata-0" / "quorum-state"
            try:
                state = json.loads(state_file.read_text())
            except (OSError, ValueError):
                continue
            if state.get("leaderId", -1) >= 0:
                states.append((state["leaderEpoch"], state["leaderId"]))
        return max(states)[1] if states else None

    def stop_node(self, node_id: int, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop one broker cleanly (SIGTERM), killing it if it has not stopped within ``timeout``."""
        process = self._processes.pop(node_id, None)
        if process is not None:
            _terminate([process], timeout)

    def restart(self, node_id: int, timeout: float = 120.0) -> None:
        self.launch(node_id)
        self.wait_ready(timeout, [node_id])

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop every broker (SIGTERM together, SIGKILL for any still running after ``timeout``)."""
        processes, self._processes = list(self._processes.values()), {}
        _terminate(processes, timeout)

    def describe(self) -> list[str]:
        """One line per broker: node id, port, process id."""
        return [f"broker {node.node_id}  port {node.port}  pid {self.pid(node.node_id)}" for node in self.layout.nodes]

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _terminate(processes: list[subprocess.Popen[bytes]], timeout: float) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def description() -> str:
    """What ``ledger cluster`` and ``compose/local-cluster`` do, for their --help."""
    return f"""\
Run ledger's Apache Kafka cluster as local JVM processes, without Docker: N combined broker +
KRaft controller nodes on free loopback ports, with the settings compose gives its brokers
(compose/kafka/cluster.env) and the Kafka version of compose/compose.yaml. Needs Java 17+.

The broker's jars come from Maven Central: the first run fetches them with Maven (mvn) into
{cache_dir()}, once; later runs use that cache (--fetch-only only fetches them).

Once every broker answers it prints the line to run in the shells of servers, workers and
read commands:
  export LEDGER_BOOTSTRAP=127.0.0.1:PORT,127.0.0.1:PORT,...
and runs until Ctrl-C (or SIGTERM), which stops every broker. The data stays in DIR: run it
again on the same DIR (with the same --brokers) to continue where it stopped."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``ledger cluster`` and ``compose/local-cluster`` (one definition for both)."""
    parser.add_argument("--brokers", type=int, default=3, metavar="N", help="number of brokers (default: %(default)s)")
    parser.add_argument("--dir", default=Path(".local-cluster"), type=Path, metavar="DIR",
                        help="folder for the cluster's data, kept across restarts (default: %(default)s)")
    parser.add_argument("--security", choices=SECURITY, default="plaintext",
                        help="plaintext (default), or sasl_ssl: clients authenticate with SCRAM over TLS, and ACLs "
                             "give a server, a worker and a read-only auditor principal what each needs on the "
                             "topics of LEDGER_TOPIC_PREFIX (it prints their client properties files)")
    parser.add_argument("--oauth-issuer", metavar="URL",
                        help="with --security sasl_ssl: the listener also takes SASL OAUTHBEARER tokens of this "
                             f"OAuth issuer, checked against its keys and for the audience {KAFKA_AUDIENCE}; the "
                             "token's subject is the principal (see --oauth-principal)")
    parser.add_argument("--oauth-principal", action="append", default=[], metavar="ROLE=SUBJECT",
                        help="give the token subject SUBJECT (with the client credentials grant: a client id) the "
                             f"ACLs of ROLE ({', '.join(PRINCIPALS)}); repeat for more")
    parser.add_argument("--fetch-only", action="store_true",
                        help="only fetch the broker's jars into the cache (what CI installs), then exit")


def run(options: argparse.Namespace, name: str = "local-cluster") -> int:
    """Run the cluster of ``options`` (from add_arguments) until a signal; ``name`` prefixes its messages.

    Every expected failure (no Java, Maven failing, a port taken, a broker exiting) is one line on
    stderr and exit status 1, never a traceback.
    """
    def interrupt(signum: int, frame: object) -> None:
        for ignored in (signal.SIGINT, signal.SIGTERM):  # one stop at a time; stopping takes seconds
            signal.signal(ignored, signal.SIG_IGN)
        raise KeyboardInterrupt

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, interrupt)
    cluster: LocalCluster | None = None
    try:
        if options.fetch_only:
            version = kafka_version()
            print(f"{name}: Apache Kafka {version} jars in {fetch_jars(version)}", flush=True)
            return 0
        oauth_principals = _oauth_principals(options.oauth_principal, options.oauth_issuer)
        cluster = LocalCluster(options.dir, options.brokers, quiet=False, security=options.security,
                               oauth_issuer=options.oauth_issuer)
        print(f"{name}: starting {options.brokers} Apache Kafka {cluster.version} brokers in "
              f"{cluster.directory}", flush=True)
        cluster.start()
        print(f"export LEDGER_BOOTSTRAP={cluster.bootstrap}", flush=True)
        if cluster.secured is not None:
            prefix = os.environ.get("LEDGER_TOPIC_PREFIX") or "ledger"
            cluster.secured.grant(cluster.bootstrap, prefix)
            print(f"{name}: SASL_SSL (SCRAM) with ACLs on the topics and groups {prefix}.*; each principal's "
                  f"client properties (passwords inside, readable by you alone):", flush=True)
            for role, principal in PRINCIPALS.items():
                print(f"export LEDGER_KAFKA_CONFIG={cluster.secured.client_file(role)}   # {principal}: a "
                      f"ledger {role}", flush=True)
            for subject, role in oauth_principals.items():
                cluster.secured.grant(cluster.bootstrap, prefix, {subject: GRANTS[role]}, principals={subject: subject})
                print(f"{name}: OAUTHBEARER tokens of {options.oauth_issuer} for {KAFKA_AUDIENCE}: {subject} has the "
                      f"ACLs of a ledger {role}", flush=True)
        for line in cluster.describe():
            print(line, flush=True)
        print(f"{name}: running; press Ctrl-C to stop every broker", flush=True)
        while len(cluster.running()) == options.brokers:
            time.sleep(0.5)
        exited = sorted({node.node_id for node in cluster.nodes} - set(cluster.running()))
        print(f"{name}: broker {exited} exited; see {cluster.directory}/node-N/broker.log", file=sys.stderr)
        return 1
    except ClusterError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # DIR (or the cache) cannot be created or written...
        reason = f"cannot use {exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc)
        print(f"{name}: {reason}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if cluster is None:  # while fetching the jars or checking Java
            print(f"{name}: interrupted", file=sys.stderr)
            return 130
        print(f"{name}: stopping", flush=True)
        return 0
    finally:
        if cluster is not None:
            were_running = cluster.running()
            cluster.stop()
            if were_running:
                print(f"{name}: stopped", flush=True)


def _oauth_principals(pairs: list[str], issuer: str | None) -> dict[str, str]:
    """``--oauth-principal ROLE=SUBJECT`` options as subject -> role."""
    if pairs and issuer is None:
        raise ClusterError("--oauth-principal names the subject of an issuer's tokens: give --oauth-issuer too")
    principals = {}
    for pair in pairs:
        role, _, subject = pair.partition("=")
        if role not in PRINCIPALS or not subject:
            raise ClusterError(f"--oauth-principal takes ROLE=SUBJECT with ROLE one of {', '.join(PRINCIPALS)}, "
                               f"not {pair!r}")
        principals[subject] = role
    return principals


def main(argv: list[str] | None = None, prog: str = "compose/local-cluster") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=description(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
