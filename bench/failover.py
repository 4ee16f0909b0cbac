"""How long acks=all writes stall when one broker of three fails; prints a markdown table.

    python bench/failover.py                                  # cluster.env as it is: SIGKILL and SIGSTOP
    python bench/failover.py --faults kill --set broker.session.timeout.ms=9000 --set replica.lag.time.max.ms=30000
    python bench/failover.py --request-timeout-ms 30000       # the producer's request timeout

Starts a local 3-broker Apache Kafka cluster (ledger.kafka.cluster, the settings of
compose/kafka/cluster.env, each ``--set`` over them), creates a topic of 8 partitions (replication 3,
``min.insync.replicas`` 2) and sends one record to every partition every 50 ms with an idempotent
acks=all producer, as a server or worker appends. After a few seconds the broker leading the most
partitions fails: ``kill`` is SIGKILL (a crash: its sockets close at once), ``stop`` is SIGSTOP for
``--stop-seconds`` and then SIGCONT (a gray failure: its sockets stay open and nothing answers).
Each row is one fault on a fresh cluster: the slowest send on any partition after the fault, the
slowest on a partition the failed broker did not lead, sends that failed, and the send latency p99
over the whole run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiokafka import AIOKafkaProducer  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402
from aiokafka.structs import TopicPartition  # noqa: E402

from ledger.kafka.cluster import LocalCluster, shared_properties  # noqa: E402

TOPIC = "bench-failover"
PARTITIONS = 8
INTERVAL_S = 0.05
WARM_S = 5.0
AFTER_S = 25.0
SETTINGS = ("broker.session.timeout.ms", "broker.heartbeat.interval.ms", "replica.lag.time.max.ms",
            "controller.quorum.fetch.timeout.ms", "controller.quorum.election.timeout.ms")


class Sends:
    """Every send's partition, start and latency (None while unconfirmed), and the failures."""

    def __init__(self) -> None:
        self.done: list[tuple[int, float, float]] = []
        self.failed: list[str] = []
        self.pending: set[asyncio.Task[None]] = set()

    async def one(self, producer: AIOKafkaProducer, partition: int) -> None:
        started = time.monotonic()
        try:
            await producer.send_and_wait(TOPIC, b"x" * 100, key=str(partition).encode(), partition=partition)
        except Exception as exc:
            self.failed.append(f"{type(exc).__name__}: {exc}")
            return
        self.done.append((partition, started, time.monotonic() - started))


async def run_fault(fault: str, overrides: dict[str, str], request_timeout_ms: int, stop_s: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="ledger-failover-") as folder:
        cluster = LocalCluster(Path(folder), 3, overrides=overrides)
        cluster.start()
        try:
            admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap)
            await admin.start()
            await admin.create_topics([NewTopic(TOPIC, PARTITIONS, 3, topic_configs={"min.insync.replicas": "2"})])
            await admin.close()
            producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, acks="all", enable_idempotence=True,
                                        linger_ms=2, request_timeout_ms=request_timeout_ms)
            await producer.start()
            sends = Sends()
            try:
                return await _drive(cluster, producer, sends, fault, stop_s)
            finally:
                if sends.pending:
                    await asyncio.wait(sends.pending, timeout=request_timeout_ms / 1000 + 5)
                await producer.stop()
        finally:
            cluster.stop()


async def _drive(cluster: LocalCluster, producer: AIOKafkaProducer, sends: Sends, fault: str,
                 stop_s: float) -> dict[str, object]:
    began = time.monotonic()
    failed_at = None
    victim_partitions: set[int] = set()
    resumed = False
    while time.monotonic() - began < WARM_S + AFTER_S + (stop_s if fault == "stop" else 0):
        now = time.monotonic()
        if failed_at is None and now - began >= WARM_S:
            leaders = {p: producer.client.cluster.leader_for_partition(TopicPartition(TOPIC, p)) for p in range(PARTITIONS)}
            victim = statistics.mode(leaders.values())
            victim_partitions = {p for p, leader in leaders.items() if leader == victim}
            pid = cluster.pid(victim)
            if fault == "kill":
                cluster.kill(victim)
            else:
                os.kill(pid, signal.SIGSTOP)
            failed_at = now
        if fault == "stop" and failed_at is not None and not resumed and now - failed_at >= stop_s:
            os.kill(cluster.pid(victim), signal.SIGCONT)
            resumed = True
        for partition in range(PARTITIONS):
            task = asyncio.create_task(sends.one(producer, partition))
            sends.pending.add(task)
            task.add_done_callback(sends.pending.discard)
        await asyncio.sleep(INTERVAL_S)
    if sends.pending:
        await asyncio.wait(sends.pending)
    after = [(p, latency) for p, started, latency in sends.done if started >= failed_at - 1.0]
    others = [latency for p, latency in after if p not in victim_partitions]
    latencies = sorted(latency for _, _, latency in sends.done)
    return {
        "max_s": max((latency for _, latency in after), default=0.0),
        "max_other_s": max(others, default=0.0),
        "failed": len(sends.failed),
        "first_failure": sends.failed[0] if sends.failed else "",
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000 if latencies else 0.0,
        "sends": len(sends.done),
        "victim_partitions": len(victim_partitions),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--faults", default="kill,stop", help="comma-separated: kill, stop (default: both)")
    parser.add_argument("--set", action="append", default=[], metavar="PROPERTY=VALUE",
                        help="a broker property over compose/kafka/cluster.env's (repeatable)")
    parser.add_argument("--request-timeout-ms", type=int, default=None,
                        help="the producer's request timeout (default: ledger's, LEDGER_PRODUCE_TIMEOUT_MS)")
    parser.add_argument("--stop-seconds", type=float, default=30.0, help="how long a stopped broker stays stopped")
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)
    request_timeout_ms = args.request_timeout_ms
    if request_timeout_ms is None:
        from ledger.settings import Settings
        request_timeout_ms = Settings.from_env().produce_timeout_ms
    effective = {**shared_properties(3), **overrides}
    print("broker settings: " + ", ".join(f"{name}={effective.get(name, 'default')}" for name in SETTINGS)
          + f"; producer request.timeout.ms={request_timeout_ms}", file=sys.stderr)
    print("| fault | slowest send after it | slowest on partitions it did not lead | sends failed | p99 | sends |")
    print("|---|---|---|---|---|---|")
    for fault in args.faults.split(","):
        row = asyncio.run(run_fault(fault, overrides, request_timeout_ms, args.stop_seconds))
        name = "SIGKILL the leader of the most partitions" if fault == "kill" else \
            f"SIGSTOP it for {args.stop_seconds:g} s, then SIGCONT"
        print(f"| {name} ({row['victim_partitions']} of {PARTITIONS}) | {row['max_s']:.2f} s | "
              f"{row['max_other_s']:.2f} s | {row['failed']} | {row['p99_ms']:.0f} ms | {row['sends']} |", flush=True)
        if row["first_failure"]:
            print(f"  first failure: {row['first_failure']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
