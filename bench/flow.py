"""approve_expense flows through ledger and through the peer (FastMCP 4 + fastmcp-tasks on Redis),
side by side on this machine, in one run, driven by the peer's own load generator.

    python bench/flow.py                          # N=2000, C in 1,16,64, 3 runs, the peer and ledger on both brokers
    python bench/flow.py --flows 200 --runs 1     # quick check
    python bench/flow.py --broker kafka --impls peer,ledger-tasks,ledger-meta --json /tmp/flow.json
    python bench/flow.py --impls ledger-tasks,ledger-meta --push --concurrency 1,64   # push beside poll
    python bench/flow.py --concurrency 1 --flows 300 --runs 1 --trace                # where a flow's time goes

Implementations/paths, interleaved run by run so that machine load hits them alike:

* ``peer``: bench/peer/server.py (one uvicorn process with its in-process Docket
  worker) on a redis-server this script starts, FLUSHALLed before every run; FastMCP defaults
  (pollIntervalMs 5000, Docket worker concurrency 10). Its venv is made with the peer's setup.sh
  when missing (``$PEER_FASTMCP_VENV``, default /tmp/peer_fastmcp_venv).
* ``ledger-tasks@embedded``: the embedded broker, ``ledger server examples/demo.py`` and ``ledger
  worker examples/demo.py`` as separate processes (a fresh broker per run), on the 2026-07-28 tasks
  extension; ledger advertises ``--poll-ms`` (default 5000, the peer's value, so both are polled
  on exactly the same schedule).
* ``ledger-tasks@kafka``: the same (fresh topics, server and worker per run) on a 3-broker Apache
  Kafka cluster of local JVMs (ledger/kafka/cluster.py; replication 3, ``min.insync.replicas`` 2), started
  once, warmed with ``--kafka-warmup`` flows and paused (SIGSTOP) whenever another run goes.
* ``ledger-meta@…``: the same stacks on the 2025-11-25 ``_meta`` pattern.
* ``ledger-push@…`` and ``ledger-relay@…`` (``--push``): the same stacks, nothing polled: the 2026-07-28
  client listens (``subscriptions/listen``) for the question and the result; the 2025-11-25 client waits
  on ``tasks/result``, which relays the question and returns the result.

Every run: a fresh stack, 20 warm-up flows (not counted), then N flows at concurrency C through
bench/flow_load.py, which runs under the peer's venv and calls the peer's ``loadgen.run_flow``
(see its docstring for the one expectation that differs for ledger: the question text). CPU
seconds of each process come from /proc/PID/stat over the measured run (the load client's from
its own getrusage); idle CPU over 3 s between warm-up and run; peak RSS is VmHWM from
/proc/PID/status, reset (clear_refs) after the warm-up. The table holds medians over the runs,
like the peer's results.md; "×peer" is ours / peer's at the same C.

``--trace`` lays out where the time of each request of a flow goes, at C=1 on the tasks path: the load
client marks when it sends each request and reads its answer, ledger's server and worker mark each hop
(request received, appended, fetched, applied, run started or woken, settled, response sent; ledger/hops.py)
in one file, on the clock all processes share. Each hop is shown at its median time after the request
was sent, over the measured flows (the peer: its requests only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ledger.kafka.broker import EmbeddedBroker, free_port  # noqa: E402
from ledger.kafka.cluster import LocalCluster  # noqa: E402
from ledger.kafka.topics import ensure_topics  # noqa: E402
from ledger.settings import Settings  # noqa: E402
from tests.support.spawn import spawned  # noqa: E402

PEER_DIR = Path(os.environ.get("PEER_DIR", Path(__file__).resolve().parent / "peer"))  # bench/peer/README.md
PEER_VENV = Path(os.environ.get("PEER_FASTMCP_VENV", "/tmp/peer_fastmcp_venv"))
LOADER = ROOT / "bench" / "flow_load.py"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
WARMUP = 20
IDLE_S = 3.0


@dataclass(frozen=True)
class Impl:
    key: str
    label: str
    path: str  # flow_load.py --path
    expect: str  # flow_load.py --expect
    broker: str | None = None  # ledger's: embedded or kafka


PEER = Impl("peer", "peer: FastMCP 4 + fastmcp-tasks, Redis (2026-07-28 tasks)", "tasks", "peer")
BROKER_LABELS = {"embedded": "embedded broker", "kafka": "Apache Kafka, 3 brokers"}
PATHS = {"tasks": "2026-07-28 tasks ext", "meta": "2025-11-25 `_meta`",
         "push": "2026-07-28 tasks ext, pushed by subscriptions/listen", "relay": "2025-11-25 relay on tasks/result"}
# Requests a flow makes besides its polls (tasks/get): create and answer; the `_meta` path reads the result with
# tasks/result; push opens one listen stream; relay one tasks/result, whose question it answers with a response.
REQUESTS_BESIDES_POLLS = {"tasks": 2, "meta": 3, "push": 3, "relay": 3}
PUSHED = ("push", "relay")
IMPLS = [PEER] + [Impl(f"ledger-{path}@{broker}", f"ledger ({label}; {BROKER_LABELS[broker]})", path, "ledger", broker)
                  for broker in BROKER_LABELS for path, label in PATHS.items()]
KAFKA_TASKS = next(impl for impl in IMPLS if impl.key == "ledger-tasks@kafka")


class SetupFailed(RuntimeError):
    pass


def say(message: str) -> None:
    print(message, flush=True)


# processes: CPU and peak RSS from /proc


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14 and 15)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise SetupFailed(f"no VmHWM for pid {pid}")


def reset_peak_rss(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def wait_for_port(port: int, process: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SetupFailed(f"{what} exited with code {process.returncode} while starting")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SetupFailed(f"{what} did not listen on port {port} within {timeout:.0f} s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


# the peer: venv, Redis, server


def peer_python() -> Path:
    """The peer venv's python, made with the peer's setup.sh when missing or incomplete."""
    python = PEER_VENV / "bin" / "python"
    check = [str(python), "-c", "import fastmcp_tasks, docket, aiohttp, httpx"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        say(f"peer: using venv {PEER_VENV}")
    else:
        setup_log = Path("/tmp/flow_peer_setup.log")
        say(f"peer: creating venv {PEER_VENV} with {PEER_DIR / 'setup.sh'} (log: {setup_log})")
        with setup_log.open("w") as log:
            done = subprocess.run(["bash", str(PEER_DIR / "setup.sh")], stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, "PEER_FASTMCP_VENV": str(PEER_VENV), "PYTHON": sys.executable})
        if done.returncode != 0 or subprocess.run(check, capture_output=True).returncode != 0:
            raise SetupFailed(f"the peer's setup.sh failed (exit {done.returncode}); see {setup_log}")
    if subprocess.run(["redis-server", "--version"], capture_output=True).returncode != 0:
        raise SetupFailed("redis-server is not installed (apt-get install -y redis-server)")
    return python


@contextmanager
def redis_server() -> Iterator[tuple[int, int]]:
    """A redis-server of our own on a free port, as the peer's README runs it: (port, pid)."""
    port = free_port()
    process = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process, "redis-server", timeout=15)
        say(f"peer: redis-server {redis_cli(port, 'info', 'server').split('redis_version:')[1].split()[0]} "
            f"on port {port} (pid {process.pid})")
        yield port, process.pid
    finally:
        stop(process)


def redis_cli(port: int, *args: str) -> str:
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=30).stdout


@contextmanager
def peer_stack(python: Path, redis: tuple[int, int]) -> Iterator[tuple[str, dict[str, int]]]:
    """FLUSHALL, then a fresh peer server.py: (url, pids)."""
    redis_port, redis_pid = redis
    if redis_cli(redis_port, "flushall").strip() != "OK":
        raise SetupFailed("redis FLUSHALL failed")
    port = free_port()
    log = open("/tmp/flow_peer_server.log", "a")
    process = subprocess.Popen([str(python), str(PEER_DIR / "server.py"), "--port", str(port),
                                "--backend", f"redis://127.0.0.1:{redis_port}/0"], stdout=log, stderr=log)
    try:
        wait_for_port(port, process, "peer server.py (log: /tmp/flow_peer_server.log)")
        yield f"http://127.0.0.1:{port}/mcp", {"server": process.pid, "redis": redis_pid}
    finally:
        stop(process)
        log.close()


# ledger: broker, server, worker


class KafkaForRuns:
    """One 3-broker Apache Kafka cluster (Apache Kafka's own jars, ledger/kafka/cluster.py) for every Kafka run:
    started once and warmed (a long-running broker's JIT has compiled its hot paths; a fresh JVM's
    has not), then paused with SIGSTOP between its runs, so that its idle burn (about a tenth of a
    core for three brokers) does not load the other runs. A resumed cluster elects its controller
    again within seconds; every run creates its own topics, which waits for their leaders."""

    def __init__(self, folder: str) -> None:
        self.cluster = LocalCluster(folder, brokers=3)

    def start(self, python: Path, warmup_flows: int) -> None:
        say(f"kafka: starting 3 Apache Kafka {self.cluster.version} brokers, then {warmup_flows} warm-up flows")
        self.cluster.start()
        if warmup_flows:
            with ledger_stack(self.cluster.bootstrap, {}) as (url, _):
                load(python, KAFKA_TASKS, url, warmup_flows, 16)
        self.pause()

    def pids(self) -> dict[str, int]:
        return {f"kafka-{node.node_id}": self.cluster.pid(node.node_id) for node in self.cluster.nodes}

    def pause(self) -> None:
        for pid in self.pids().values():
            os.kill(pid, signal.SIGSTOP)

    @contextmanager
    def resumed(self) -> Iterator[tuple[str, dict[str, int]]]:
        for pid in self.pids().values():
            os.kill(pid, signal.SIGCONT)
        try:
            self.cluster.wait_ready(120)
            yield self.cluster.bootstrap, self.pids()
        finally:
            self.pause()

    def stop(self) -> None:
        for pid in self.pids().values():
            os.kill(pid, signal.SIGCONT)
        self.cluster.stop()


@contextmanager
def fresh_broker(kind: str) -> Iterator[tuple[str, dict[str, int]]]:
    """A fresh broker of ``kind`` (embedded, or kafka: 3 brokers of Apache Kafka's own jars): its
    bootstrap and its processes."""
    if kind == "embedded":
        with EmbeddedBroker(port=free_port(), output=subprocess.DEVNULL) as embedded:
            yield embedded.bootstrap, {"broker": embedded.pid}
        return
    with tempfile.TemporaryDirectory(prefix="bench-kafka-") as folder, LocalCluster(folder, brokers=3) as cluster:
        yield cluster.bootstrap, {f"kafka-{node.node_id}": cluster.pid(node.node_id) for node in cluster.nodes}


@contextmanager
def broker(kind: str, kafka: KafkaForRuns | None) -> Iterator[tuple[str, dict[str, int]]]:
    """The broker for one run: a fresh embedded broker, or the Kafka cluster resumed for it."""
    if kind == "kafka":
        assert kafka is not None
        with kafka.resumed() as running:
            yield running
        return
    with fresh_broker(kind) as running:
        yield running


@contextmanager
def ledger_stack(bootstrap: str, broker_pids: dict[str, int],
                 trace: Path | None = None) -> Iterator[tuple[str, dict[str, int]]]:
    """Fresh topics, then ``ledger worker`` and ``ledger server`` on examples/demo.py (marking their hops
    in ``trace``)."""
    settings = Settings.from_env(bootstrap=bootstrap, topic_prefix=f"flow-{uuid.uuid4().hex[:8]}")
    asyncio.run(ensure_topics(settings))
    port = free_port()
    env = {"LEDGER_HOP_TRACE": str(trace)} if trace else None
    with spawned(["worker", "examples/demo.py"], settings, "ledger worker", env=env) as worker, \
            spawned(["server", "examples/demo.py", "--port", str(port)], settings, "serving", env=env) as server:
        yield f"http://127.0.0.1:{port}/mcp", {"server": server.pid, "worker": worker.pid, **broker_pids}


# measuring


def load(python: Path, impl: Impl, url: str, flows: int, concurrency: int, trace: Path | None = None) -> dict:
    """One run of bench/flow_load.py (the peer's loadgen) under the peer's venv."""
    cmd = [str(python), str(LOADER), "--path", impl.path, "--expect", impl.expect, "--url", url,
           "-n", str(flows), "-c", str(concurrency), *(["--trace", str(trace)] if trace else [])]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PEER_DIR": str(PEER_DIR)})
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SetupFailed(f"load generator failed ({impl.key}, exit {done.returncode}): {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def idle_cpu_percent(pids: dict[str, int]) -> dict[str, float]:
    """Percent of one core each process burns with no load, over IDLE_S seconds."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    time.sleep(IDLE_S)
    return {name: 100 * (cpu_seconds(pid) - before[name]) / IDLE_S for name, pid in pids.items()}


def measure(python: Path, impl: Impl, url: str, pids: dict[str, int], flows: int, concurrency: int,
            trace: Path | None = None) -> dict:
    load(python, impl, url, WARMUP, min(concurrency, WARMUP))
    idle = idle_cpu_percent(pids)
    load1 = os.getloadavg()[0]
    for pid in pids.values():
        reset_peak_rss(pid)
    if trace:
        trace.write_text("")  # the warm-up's hops
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    result = load(python, impl, url, flows, concurrency, trace)
    ok = max(result["ok"], 1)
    result["cpu_s_per_task"] = {name: (cpu_seconds(pid) - cpu0[name]) / ok for name, pid in pids.items()}
    result["cpu_s_per_task"]["client"] = result["client_cpu_s"] / ok
    result["peak_rss_mb"] = {name: peak_rss_mb(pid) for name, pid in pids.items()}
    result["idle_cpu_percent"] = idle
    result["loadavg1_before"] = load1
    if trace:
        result["waterfall"] = waterfall(trace, {pid: name for name, pid in pids.items()})
    return result


def one_run(python: Path, redis: tuple[int, int], kafka: KafkaForRuns | None, impl: Impl, flows: int,
            concurrency: int, trace: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="flow-trace-") as folder:
        hops = Path(folder) / "hops" if trace and concurrency == 1 and impl.path == "tasks" else None
        if impl is PEER:
            with peer_stack(python, redis) as (url, pids):
                return measure(python, impl, url, pids, flows, concurrency, hops)
        with broker(impl.broker, kafka) as (bootstrap, broker_pids), \
                ledger_stack(bootstrap, broker_pids, hops) as (url, pids):
            return measure(python, impl, url, pids, flows, concurrency, hops)


# the hop trace


def waterfall(trace: Path, roles: dict[int, str]) -> dict[str, list[tuple[str, float, float, int]]]:
    """Each request of a flow (``tools/call #1``, ``tasks/get #1``, ...) with the hops inside it: (who and
    which hop, median ms after the request was sent, median ms after the latest of the hops listed before it
    in the same flow, in how many of the flows), in time order. Flows run one at a time (C=1), so every hop
    between a request's sending and its answer belongs to it. The second figure is each flow's own gap,
    which the difference of two medians is not where some flows lack a hop or order two hops the other way."""
    marks = sorted((int(ns), int(pid), hop) for ns, pid, hop, _ in (line.split(" ", 3)
                                                                    for line in trace.read_text().splitlines()))
    legs: dict[str, list[dict[str, float]]] = {}
    sent: Counter[str] = Counter()
    open_leg: tuple[str, int, dict[str, float], Counter[str]] | None = None
    for ns, pid, hop in marks:
        if hop.startswith("client.sent:"):
            method = hop.removeprefix("client.sent:")
            if method == "tools/call":
                sent.clear()
            sent[method] += 1
            open_leg = (f"{method} #{sent[method]}", ns, {}, Counter())
        elif open_leg is not None:
            name, start, offsets, seen = open_leg
            if hop.startswith("client.received:"):
                offsets["client: answer read"] = (ns - start) / 1e6
                legs.setdefault(name, []).append(offsets)
                open_leg = None
                continue
            label = f"{roles.get(pid, 'client')}: {hop}"
            seen[label] += 1
            offsets[label if seen[label] == 1 else f"{label} ({seen[label]})"] = (ns - start) / 1e6
    laid_out = {}
    for name, flows in legs.items():
        labels = Counter(label for offsets in flows for label in offsets)
        order = sorted((label for label, count in labels.items() if count * 2 >= len(flows)),
                       key=lambda label: statistics.median(o[label] for o in flows if label in o))
        hops = []
        for index, label in enumerate(order):
            at = statistics.median(o[label] for o in flows if label in o)
            gaps = [o[label] - max((o[before] for before in order[:index] if before in o), default=0.0)
                    for o in flows if label in o]
            hops.append((label, at, statistics.median(gaps), labels[label]))
        laid_out[f"{name} ({len(flows)} flows)"] = hops
    return laid_out


def waterfall_table(impl: Impl, runs: list[dict]) -> str:
    lines = [f"### {impl.label}, C=1: where each request's time goes", "",
             "| request | hop | ms after sending (median) | + ms in the flow (median) | in flows |",
             "|---|---|---|---|---|"]
    for leg, hops in runs[0]["waterfall"].items():
        for label, at, gap, count in hops:
            lines.append(f"| {leg} | {label} | {at:.2f} | {gap:.2f} | {count} |")
    return "\n".join(lines)


# the table


def median(runs: list[dict], *path: str) -> float:
    values = []
    for run in runs:
        value = run
        for key in path:
            value = value[key]
        values.append(value)
    return statistics.median(values)


def ratio(ours: float, peer: float) -> str:
    return f"{ours / peer:.2f}" if peer else "n/a"


def row(impl: Impl, concurrency: int, runs: list[dict], peer_runs: list[dict]) -> str:
    legs = ("create_ms", "to_input_required_ms", "answer_to_completed_ms")
    latency = [f"{median(runs, leg, 'p50'):.1f} / {median(runs, leg, 'p99'):.1f}" for leg in legs]
    tps = median(runs, "throughput_tps")
    if impl is PEER or not peer_runs:
        tps_ratio = p50_ratio = "—"
    else:
        tps_ratio = ratio(tps, median(peer_runs, "throughput_tps"))
        p50_ratio = " / ".join(ratio(median(runs, leg, "p50"), median(peer_runs, leg, "p50")) for leg in legs)
    cpu = {name: median(runs, "cpu_s_per_task", name) for name in runs[0]["cpu_s_per_task"]}
    own_cpu = sum(v for name, v in cpu.items() if name != "client")
    cpu_text = ", ".join(f"{name} {v:.4f}" for name, v in cpu.items()) + f"; total w/o client {own_cpu:.4f}"
    idle = ", ".join(f"{name} {median(runs, 'idle_cpu_percent', name):.1f}" for name in runs[0]["idle_cpu_percent"])
    rss = ", ".join(f"{name} {max(r['peak_rss_mb'][name] for r in runs):.0f}" for name in runs[0]["peak_rss_mb"])
    loads = [r["loadavg1_before"] for r in runs]
    return (f"| {impl.label} | {concurrency} | {tps:.1f} ({', '.join(str(r['throughput_tps']) for r in runs)}) | "
            f"{tps_ratio} | {' | '.join(latency)} | {p50_ratio} | {requests_per_flow(impl, runs)} | "
            f"{cpu_text} | {idle} | {rss} | {sum(r['errors'] for r in runs)} | {min(loads):.2f}–{max(loads):.2f} |")


def requests_per_flow(impl: Impl, runs: list[dict]) -> str:
    polls = median(runs, "mean_polls_per_task")
    return f"{polls + REQUESTS_BESIDES_POLLS[impl.path]:.2f} ({polls:.2f})"


def table(results: dict[tuple[str, int], list[dict]], impls: list[Impl], levels: list[int]) -> str:
    lines = ["| implementation / path | C | completed flows/s (runs) | flows/s ×peer | create p50/p99 ms | "
             "create→input_required p50/p99 ms | answer→completed p50/p99 ms | p50 ×peer (create / →IR / "
             "answer→done) | requests/flow (polls) | CPU s per task | idle CPU % of a core | peak RSS MB | errors | "
             "load1 before |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for concurrency in levels:
        for impl in impls:
            runs = results.get((impl.key, concurrency))
            if runs:
                lines.append(row(impl, concurrency, runs, results.get((PEER.key, concurrency), [])))
    return "\n".join(lines)


def run_all(python: Path, impls: list[Impl], levels: list[int], runs: int, flows: int, kafka_warmup: int,
            trace: bool) -> dict:
    """Every (implementation, C, run), interleaved: C, then run, then implementation."""
    results: dict[tuple[str, int], list[dict]] = {}
    with redis_server() as redis, tempfile.TemporaryDirectory(prefix="flow-kafka-") as folder:
        kafka = KafkaForRuns(folder) if any(impl.broker == "kafka" for impl in impls) else None
        try:
            if kafka is not None:
                kafka.start(python, kafka_warmup)
            for concurrency in levels:
                for run in range(1, runs + 1):
                    for impl in impls:
                        tag = f"[{impl.key} C={concurrency} run {run}/{runs}]"
                        say(f"{tag} starting a fresh stack, {WARMUP} warm-up flows, {IDLE_S:.0f} s idle, {flows} flows")
                        result = one_run(python, redis, kafka, impl, flows, concurrency, trace)
                        results.setdefault((impl.key, concurrency), []).append(result)
                        say(f"{tag} load1 before {result['loadavg1_before']:.2f}: {result['throughput_tps']} "
                            f"flows/s, {result['ok']} ok, {result['errors']} errors {result['error_samples'][:1] or ''}")
        finally:
            if kafka is not None:
                kafka.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flows", type=int, default=2000, help="flows per run (default %(default)s)")
    parser.add_argument("--runs", type=int, default=3, help="runs per implementation and C (default %(default)s)")
    parser.add_argument("--concurrency", default="1,16,64", help="levels, comma-separated (default %(default)s)")
    parser.add_argument("--poll-ms", type=int, default=5000,
                        help="LEDGER_POLL_INTERVAL_MS, the pollInterval ledger advertises (default %(default)s, "
                             "the peer's)")
    parser.add_argument("--impls", default="peer,ledger-tasks", help="which to run: peer, ledger-tasks, ledger-meta, or "
                        "one path on one broker such as ledger-tasks@kafka (default %(default)s)")
    parser.add_argument("--broker", default="embedded,kafka",
                        help="brokers for ledger, comma-separated: embedded, kafka (default %(default)s)")
    parser.add_argument("--kafka-warmup", type=int, default=1000,
                        help="flows through the Kafka cluster once it started, before any run (default %(default)s)")
    parser.add_argument("--push", action="store_true",
                        help="also run ledger's paths that wait for the server to push instead of polling: "
                             "ledger-push (2026-07-28 subscriptions/listen) and ledger-relay (2025-11-25 "
                             "tasks/result relay), beside the polling paths")
    parser.add_argument("--trace", action="store_true",
                        help="at C=1 on the tasks path, also lay out where each request's time goes, hop by hop "
                             "(the first run of each implementation)")
    parser.add_argument("--json", type=Path, help="also write every run's raw result here")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    wanted, brokers = args.impls.split(","), args.broker.split(",")
    if args.push:
        wanted += [f"ledger-{path}" for path in PUSHED]
    impls = [i for i in IMPLS if i.key in wanted or (i.broker in brokers and i.key.split("@")[0] in wanted)]
    os.environ["LEDGER_POLL_INTERVAL_MS"] = str(args.poll_ms)

    try:
        python = peer_python()
        say(f"{os.cpu_count()} CPUs, load1 {os.getloadavg()[0]:.2f}; ledger advertises pollInterval {args.poll_ms} ms, "
            f"the peer 5000 ms; {args.flows} flows per run, {args.runs} runs, C in {levels}")
        say("validation: loadgen's checks throughout; for ledger the question text expected is examples/demo.py's "
            "'Approve expense of {amount} for {description!r}?' instead of the peer's "
            "'Approve expense of {amount}: {description}?'")
        results = run_all(python, impls, levels, args.runs, args.flows, args.kafka_warmup, args.trace)
    except SetupFailed as failure:
        sys.exit(f"flow.py: {failure}")
    if args.json:
        args.json.write_text(json.dumps({f"{k} C={c}": runs for (k, c), runs in results.items()}, indent=1))
    say("")
    say(table(results, impls, levels))
    say("\n×peer: ours ÷ the peer's at the same C (flows/s: above 1 is more; latency: below 1 is faster). "
        "Medians over runs; peak RSS is the largest over runs; CPU s per task is over the measured run, "
        "idle burn included.")
    for impl in impls:
        runs = results.get((impl.key, 1), [])
        if runs and "waterfall" in runs[0]:
            say("")
            say(waterfall_table(impl, runs))


if __name__ == "__main__":
    main()
