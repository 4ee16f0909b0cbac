"""Apache Kafka brokers failing under ledger (the session's local 3-broker cluster): the leader of
most partitions killed mid-run, two of three brokers down, every broker restarted in turn. Servers
and workers run as processes and are never restarted; nothing the log acknowledged may be lost.
Prints its figures."""

from __future__ import annotations

import asyncio
import errno
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import httpx2 as httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from ledger.contract.events import TaskCreated
from ledger.kafka.cluster import LocalCluster
from ledger.kafka.topics import ensure_topics
from ledger.settings import Settings
from projections.status import StatusProjection
from tests.support.flows import FlowStats, approve_many, approve_through, asked, asked_or_done, call, done
from tests.support.mcp_client import RESPONSE, call_as_task, connect, first_question, get_task, poll_until
from tests.support.outcomes import checked_log
from tests.support.raw_http import ModernClient
from tests.support.spawn import ledger_roles
from tests.support.stack import until

pytestmark = pytest.mark.slow

async def restart(cluster: LocalCluster, node_id: int) -> None:
    cluster.launch(node_id)  # from this thread: a broker dies with the thread that started it
    await asyncio.to_thread(cluster.wait_ready, 120, [node_id])


async def fully_replicated(cluster: LocalCluster, settings: Settings) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    await admin.start()
    try:
        topic = (await admin.describe_topics([settings.events_topic]))[0]
        return all(len(p["isr"]) == len(cluster.nodes) for p in topic["partitions"])
    finally:
        await admin.close()


async def partition_leaders(cluster: LocalCluster, settings: Settings) -> Counter[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    await admin.start()
    try:
        topic = (await admin.describe_topics([settings.events_topic]))[0]
        return Counter(p["leader"] for p in topic["partitions"])
    finally:
        await admin.close()


async def under_load(cluster: LocalCluster, settings: Settings,
                     fault: Callable[[str, list[subprocess.Popen[str]]], Awaitable[str]], flows: int = 1_000) -> str:
    """Run approve_expense flows through a server and a worker (processes, never restarted), 50 at a
    time, at least ``flows`` of them and more until ``fault`` is over; bring the fault on once a quarter
    have completed, and check the log once all have: each flow completed once, nothing confirmed lost,
    and no client saw an error. The figures, as a sentence."""
    settings = replace(settings, partitions=8)
    await ensure_topics(settings)
    stats, over = FlowStats(), asyncio.Event()
    with ledger_roles(settings) as (url, roles):
        running = asyncio.create_task(approve_through(url, stats, over, flows))
        await until(lambda: completed(stats, flows // 4), 300)
        fault_at, completed_before = time.monotonic(), len(stats.completed_at)
        try:
            what = await fault(url, roles)
        finally:
            over.set()
        completed_during = len(stats.completed_at) - completed_before
        task_ids = await asyncio.wait_for(running, 600)
        elapsed = time.monotonic() - stats.started_at
    await until(lambda: fully_replicated(cluster, settings), 120)
    _, on_topic, confirmed, unconfirmed = await checked_log(settings, roles, task_ids)
    figures = (f"{len(task_ids)} approve_expense flows, 50 at a time; {what} {fault_at - stats.started_at:.1f} s "
               f"in, {completed_during} flows completed while it lasted: all completed in {elapsed:.1f} s, each "
               f"once; {confirmed} events confirmed by the log, {on_topic} on the topic ({unconfirmed} appends not "
               f"confirmed); {stats.describe()}")
    if stats.errors:
        for role in roles:
            print(f"--- last output of {role.args[1:3]} ---", *list(role.output)[-40:], sep="\n")
    assert not stats.errors, figures
    return figures


async def test_the_leader_of_most_partitions_killed_mid_run(local_cluster: LocalCluster, settings: Settings,
                                                            figures) -> None:
    async def kill_the_busiest_broker(url: str, roles: list[subprocess.Popen[str]]) -> str:
        victim, led = (await partition_leaders(local_cluster, settings)).most_common(1)[0]
        local_cluster.kill(victim)
        await asyncio.sleep(10)  # the outage itself: the broker stays down 10 s, whatever happens meanwhile
        await restart(local_cluster, victim)
        return f"broker {victim} (leader of {led} of 8 partitions) SIGKILLed, restarted 10 s later,"

    figures(await under_load(local_cluster, settings, kill_the_busiest_broker))


async def test_the_active_controller_killed_mid_run(local_cluster: LocalCluster, settings: Settings,
                                                    figures) -> None:
    async def kill_the_controller(url: str, roles: list[subprocess.Popen[str]]) -> str:
        victim = local_cluster.active_controller()
        assert victim is not None, "no running node names a KRaft leader"
        local_cluster.kill(victim)
        await asyncio.sleep(10)
        await restart(local_cluster, victim)
        return f"broker {victim} (the active KRaft controller) SIGKILLed, restarted 10 s later,"

    figures(await under_load(local_cluster, settings, kill_the_controller))


async def test_a_broker_frozen_for_30_s_mid_run(local_cluster: LocalCluster, settings: Settings, figures) -> None:
    # SIGSTOP is a gray failure: the broker's sockets stay open and nothing answers on them, so clients
    # learn of it only by timeouts, and the controller only when the broker's session runs out.
    async def freeze_the_busiest_broker(url: str, roles: list[subprocess.Popen[str]]) -> str:
        victim, led = (await partition_leaders(local_cluster, settings)).most_common(1)[0]
        local_cluster.freeze(victim)
        try:
            said = await readiness_for(url, 30)
        finally:
            local_cluster.thaw(victim)
        assert {status for status, _ in said} == {200}, said
        degraded = [body["degraded"] for _, body in said if "degraded" in body]
        assert degraded, "/readyz never said it waited on a partition's leader"
        return (f"broker {victim} (leader of {led} of 8 partitions) SIGSTOPped for 30 s (/readyz 200 throughout, "
                f"{len(degraded)} of {len(said)} looks said {degraded[0]!r}), then SIGCONT,")

    figures(await under_load(local_cluster, settings, freeze_the_busiest_broker))


async def test_the_server_frozen_for_10_s_mid_run(local_cluster: LocalCluster, settings: Settings,
                                                  figures) -> None:
    # A frozen server holds its clients' requests (they wait, they do not fail), and its producer's
    # requests time out meanwhile: once it runs again, what it was appending settles, once each.
    async def freeze_the_server(url: str, roles: list[subprocess.Popen[str]]) -> str:
        server = roles[0]
        server.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(10)
        finally:
            server.send_signal(signal.SIGCONT)
        return "the server process SIGSTOPped for 10 s, then SIGCONT,"

    figures(await under_load(local_cluster, settings, freeze_the_server))


@pytest.mark.parametrize("fault", ["SIGKILLed", "SIGSTOPped for 20 s"])
async def test_answers_through_tasks_get_meta_ride_out_a_broker_failing(local_cluster: LocalCluster,
                                                                        settings: Settings, figures,
                                                                        fault: str) -> None:
    # The 2025-11-25 pattern with the SDK's client: 50 tasks wait, the broker leading most partitions
    # fails, and every question is answered at once through tasks/get _meta while it is down.
    settings = replace(settings, partitions=8)
    await ensure_topics(settings)
    latencies: list[float] = []
    errors: list[str] = []

    async def answer(client, task_id: str, elicitation_id: str) -> None:
        started = time.monotonic()
        try:
            task = await get_task(client, task_id, {RESPONSE: {"elicitationId": elicitation_id, "action": "accept",
                                                               "content": {"approved": True}}})
            if task["status"] not in ("working", "completed"):
                errors.append(f"{task_id} {task['status']}")
        except Exception as exc:  # an MCP error reply, or the transport failing
            errors.append(f"{type(exc).__name__}: {exc}")
        latencies.append(time.monotonic() - started)

    with ledger_roles(settings) as (url, roles):
        async with connect(url) as client:
            task_ids = [(await call_as_task(client, "approve_expense", {"amount": i, "description": "meta"}))[
                "task"]["taskId"] for i in range(50)]
            questions = {task_id: await first_question(client, task_id) for task_id in task_ids}
            victim, led = (await partition_leaders(local_cluster, settings)).most_common(1)[0]
            failed_at = time.monotonic()
            if fault == "SIGKILLed":
                local_cluster.kill(victim)
            else:
                local_cluster.freeze(victim)
            try:
                await asyncio.gather(*(answer(client, task_id, key) for task_id, key in questions.items()))
                answered_s = time.monotonic() - failed_at
                await asyncio.sleep(max(0.0, 20 - answered_s))
            finally:
                if fault == "SIGKILLed":
                    await restart(local_cluster, victim)
                else:
                    local_cluster.thaw(victim)
            for task_id in task_ids:
                task = await poll_until(client, task_id, lambda t: t["status"] == "completed", timeout=120)
                assert task["status"] == "completed", task
    _, on_topic, confirmed, unconfirmed = await checked_log(settings, roles, task_ids)
    latencies.sort()
    figures(f"50 tasks waiting; broker {victim} (leader of {led} of 8 partitions) {fault}, then every question "
            f"answered at once through 2025-11-25 tasks/get _meta: {len(errors)} errors, answers p50 "
            f"{latencies[len(latencies) // 2]:.2f} s, max {latencies[-1]:.2f} s, all answered {answered_s:.1f} s after "
            f"the fault; every task completed, once; {confirmed} events confirmed, {on_topic} on the topic "
            f"({unconfirmed} appends not confirmed)")
    assert not errors, errors


@pytest.fixture
def cluster_with_a_fragile_disk(broker_kind: str, tmp_path: Path) -> Iterator[tuple[LocalCluster, Path]]:
    """A 3-broker cluster of its own whose broker 3 keeps its data on a filesystem of its own, which the
    test can fill (a tmpfs: mounting one needs root, as the CI machine runs)."""
    if broker_kind != "kafka":
        pytest.skip("fails an Apache Kafka broker's disk: runs with --broker kafka")
    cluster = LocalCluster(tmp_path / "kafka", brokers=3)
    disk = cluster.data_dir(3)
    disk.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1g", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a filesystem to fail (needs root): {mounted.stderr.strip()}")
    try:
        cluster.start()
        try:
            yield cluster, disk
        finally:
            cluster.stop()
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=False)


def fill(filler: Path) -> None:
    """Take every free byte of ``filler``'s filesystem."""
    with open(filler, "wb", buffering=0) as taken:
        chunk = b"\0" * (1 << 20)
        try:
            while True:
                taken.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc


async def test_a_brokers_disk_failing_mid_run(cluster_with_a_fragile_disk: tuple[LocalCluster, Path],
                                              settings: Settings, figures) -> None:
    # A disk that fails under a broker: its writes fail (here the filesystem fills up; a read-only
    # remount is refused while Kafka holds its files open, and root writes through file permissions).
    cluster, disk = cluster_with_a_fragile_disk

    async def fail_the_disk(url: str, roles: list[subprocess.Popen[str]]) -> str:
        filler = disk / "filler"
        fill(filler)
        failed_at = time.monotonic()
        # Kafka takes a log directory whose writes fail offline; with its only one (the metadata log's
        # too) offline, the broker stops itself.
        await until(lambda: cluster.pid(3) is None, 60, lambda: "broker 3 went on with a full disk")
        stopped_s = time.monotonic() - failed_at
        await asyncio.sleep(5)
        filler.unlink()
        await restart(cluster, 3)
        return (f"broker 3's disk failing (its filesystem full; the broker stopped itself {stopped_s:.1f} s "
                f"later), mended 5 s after that and the broker restarted on it,")

    figures(await under_load(cluster, replace(settings, bootstrap=cluster.bootstrap), fail_the_disk))


async def test_every_broker_killed_and_back_20_s_later(local_cluster: LocalCluster, settings: Settings,
                                                      figures) -> None:
    # The log is away for 20 s: clients get clear errors meanwhile (and try again), and everything goes
    # on once the brokers are back on their data, without restarting the server or the worker.
    settings = replace(settings, partitions=8)
    await ensure_topics(settings)
    flows, stats, over = 300, FlowStats(), asyncio.Event()
    with ledger_roles(settings) as (url, roles):
        running = asyncio.create_task(approve_through(url, stats, over, flows, concurrency=20))
        await until(lambda: completed(stats, flows // 4), 300)
        for node in local_cluster.nodes:
            local_cluster.kill(node.node_id)
        down_at = time.monotonic()
        try:
            await asyncio.sleep(20)
            for node in local_cluster.nodes:
                local_cluster.launch(node.node_id)
            await asyncio.to_thread(local_cluster.wait_ready, 120)
        finally:
            over.set()
        back_at = time.monotonic()
        errors_during = sum(stats.errors.values())
        task_ids = await asyncio.wait_for(running, 600)
        all_done_s = time.monotonic() - back_at
    events, on_topic, confirmed, unconfirmed = await checked_log(settings, roles, task_ids)
    rows = StatusProjection()
    for event in events:
        rows.apply(event)
    unfinished = {row.task_id: row.status for row in rows.rows.values() if row.status not in
                  ("completed", "input_required")}
    assert not unfinished, f"tasks left unfinished after the brokers came back: {unfinished}"
    figures(f"{len(task_ids)} approve_expense flows, 20 at a time; all 3 brokers SIGKILLed {down_at - stats.started_at:.1f} s in and "
            f"started again on their data 20 s later (answering {back_at - down_at:.1f} s after the kill): "
            f"{errors_during} client-visible errors while they were away, all flows completed "
            f"{all_done_s:.1f} s after they were back, each once, no task left working, no restart of ledger; "
            f"{confirmed} events confirmed, {on_topic} on the topic ({unconfirmed} appends not confirmed); "
            f"{stats.describe()}")


async def test_two_of_three_brokers_down_is_a_clear_error_then_carries_on(local_cluster: LocalCluster,
                                                                         settings: Settings, figures) -> None:
    settings = replace(settings, append_timeout_ms=5_000)
    await ensure_topics(settings)
    stats, gate = FlowStats(), asyncio.Semaphore(10)
    with ledger_roles(settings) as (url, roles):
        async with ModernClient(url) as client:
            waiting = [(await call(client, "tools/call", {"name": "approve_expense", "arguments": {
                "amount": i, "description": "before"}}, stats, gate))["result"]["taskId"] for i in range(5)]
            questions = {}
            for task_id in waiting:
                task = await until(lambda: asked(client, task_id), 60)
                questions[task_id] = next(iter(task["inputRequests"]))
            down = [node.node_id for node in local_cluster.nodes[1:]]
            for node_id in down:
                local_cluster.kill(node_id)

            started = time.monotonic()
            created = await client.call("tools/call", {"name": "approve_expense", "arguments": {
                "amount": 99, "description": "during"}})
            create_s = time.monotonic() - started
            started = time.monotonic()
            answered = await client.call("tasks/update", {"taskId": waiting[0], "inputResponses": {
                questions[waiting[0]]: {"action": "accept", "content": {"approved": True}}}})
            answer_s = time.monotonic() - started
            async with httpx.AsyncClient() as http:
                ready = await http.get(url.replace("/mcp", "/readyz"))
            for response in (created, answered):
                assert response["error"]["code"] == -32603
                assert "not confirmed" in response["error"]["message"] and response["error"]["data"]["taskId"]
            assert ready.status_code == 503 and "reachable" in ready.json()["reason"], ready.text

            for node_id in down:
                await restart(local_cluster, node_id)
            recovered_at = time.monotonic()

            async def ready_again() -> bool:
                async with httpx.AsyncClient() as http:
                    return (await http.get(url.replace("/mcp", "/readyz"))).status_code == 200

            await until(ready_again, 120)
            ready_s = time.monotonic() - recovered_at
            # What was not confirmed may or may not have been recorded; either way it is whole.
            late_task = created["error"]["data"]["taskId"]
            survivors = waiting + [late_task]
            found = await call(client, "tasks/get", {"taskId": late_task}, stats, gate)
            if "error" in found:
                survivors.remove(late_task)
            for task_id in survivors:
                task = await until(lambda: asked_or_done(client, task_id), 120)
                if task["status"] == "input_required":
                    key = next(iter(task["inputRequests"]))
                    reply = await client.call("tasks/update", {"taskId": task_id, "inputResponses": {
                        key: {"action": "accept", "content": {"approved": True}}}})
                    assert "result" in reply, reply
                await until(lambda: done(client, task_id), 120)
    outputs = "".join(line for role in roles for line in role.output)
    assert "Traceback" not in outputs
    events, on_topic, confirmed, unconfirmed = await checked_log(settings, roles, survivors)
    late_recorded = any(isinstance(e, TaskCreated) and e.task_id == late_task for e in events)
    figures(f"2 of 3 brokers SIGKILLed: a create failed after {create_s:.1f} s and an answer after {answer_s:.1f} s "
            f"with a clear MCP error (LEDGER_APPEND_TIMEOUT_MS 5000); /readyz 503: {ready.json()['reason']!r}; "
            f"brokers back: ready again in {ready_s:.1f} s without restarting server or worker; the unconfirmed "
            f"create was {'recorded after all and completed' if late_recorded else 'never recorded'}; "
            f"{confirmed} events confirmed, {on_topic} on the topic ({unconfirmed} appends not confirmed)")


async def test_every_broker_restarted_in_turn_under_load(local_cluster: LocalCluster, settings: Settings,
                                                         figures) -> None:
    settings = replace(settings, partitions=8)
    await ensure_topics(settings)
    flows, stats = 300, FlowStats()
    with ledger_roles(settings) as (url, roles):
        running = asyncio.create_task(approve_many(url, flows, stats, concurrency=20))
        for node in local_cluster.nodes:
            await until(lambda: fully_replicated(local_cluster, settings), 120)
            local_cluster.stop_node(node.node_id)
            await restart(local_cluster, node.node_id)
        task_ids = await asyncio.wait_for(running, 600)
        elapsed = time.monotonic() - stats.started_at
    _, on_topic, confirmed, unconfirmed = await checked_log(settings, roles, task_ids)
    figures(f"{flows} approve_expense flows while each of the 3 brokers was stopped and restarted in turn: all "
            f"completed in {elapsed:.1f} s, each once; {confirmed} events confirmed, {on_topic} on the topic "
            f"({unconfirmed} not confirmed); {stats.describe()}")


async def readiness_for(url: str, seconds: float) -> list[tuple[int, dict]]:
    """What the server's /readyz said, twice a second for ``seconds``."""
    said = []
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=5) as http:
        while time.monotonic() < deadline:
            ready = await http.get(url.replace("/mcp", "/readyz"))
            said.append((ready.status_code, ready.json()))
            await asyncio.sleep(0.5)
    return said


async def completed(stats: FlowStats, count: int) -> bool:
    return len(stats.completed_at) >= count
