"""The worker's /metrics and /healthz on a port of its own, after a demo run of ``ledger dev``; and
the Grafana dashboard in compose/ names only series that the server and the worker serve."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from ledger.kafka.broker import free_port
from tests.support.raw_http import ModernClient
from tests.support.spawn import LEDGER, drain, wait_for_line
from tests.support.stack import in_status, until

DASHBOARD = Path(__file__).resolve().parent.parent / "compose" / "grafana" / "ledger-dashboard.json"
WORKER_SERIES = ("ledger_worker_runs_started_total", "ledger_worker_runs_finished_total",
                 "ledger_worker_replays_total", "ledger_worker_nondeterminism_errors_total",
                 "ledger_worker_run_seconds_bucket", "ledger_worker_elicitation_wait_seconds_bucket",
                 "ledger_worker_hot_tasks", "ledger_worker_parked_tasks", "ledger_worker_queued_runs",
                 "ledger_worker_free_slots", "ledger_worker_consumer_lag", "ledger_worker_holes_waited_total",
                 "ledger_worker_timers_pending", "ledger_worker_timer_overdue_seconds")
APPEND_SERIES = ("ledger_appends_waiting", "ledger_append_oldest_wait_seconds", "ledger_producer_replacements_total",
                 "ledger_partition_in_sync_replicas")


@pytest.fixture(scope="module")
def dev_with_metrics() -> Iterator[tuple[str, str, str]]:
    """``ledger dev`` with the hot window closed (waiting tasks park): MCP URL, server and worker /metrics."""
    port, metrics_port = free_port(), free_port()
    process = subprocess.Popen(LEDGER + ["dev", "--port", str(port), "--metrics-port", str(metrics_port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "LEDGER_HOT_WINDOW_MS": "0"})
    try:
        banner = "".join(wait_for_line(process, "Press Ctrl-C", timeout=60))
        drain(process)
        assert f"http://127.0.0.1:{metrics_port}/metrics (worker)" in banner
        yield (f"http://127.0.0.1:{port}/mcp", f"http://127.0.0.1:{port}/metrics",
               f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        process.kill()
        process.wait(30)


def series(text: str) -> dict[str, float]:
    """Each sample of a Prometheus exposition, by its name and labels."""
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


async def demo_run(url: str) -> None:
    """A question answered after its task parked (a re-run; one answer refused first), and a tool that
    only counts."""
    async with ModernClient(url) as client:
        created = await client.result("tools/call", {"name": "approve_expense",
                                                     "arguments": {"amount": 4, "description": "ink"}})
        [key] = (await in_status(client, created["taskId"], "input_required"))["inputRequests"]
        refused = await client.call("tasks/update", {"taskId": created["taskId"], "inputResponses": {
            key: {"action": "accept", "content": {"approved": "yes"}}}})
        assert refused["error"]["code"] == -32602
        await client.result("tasks/update", {"taskId": created["taskId"], "inputResponses": {
            key: {"action": "accept", "content": {"approved": True}}}})
        counted = await client.result("tools/call", {"name": "count_slowly", "arguments": {"n": 2}})
        for task_id in (created["taskId"], counted["taskId"]):
            await in_status(client, task_id, "completed")


async def test_the_worker_serves_every_series_after_a_demo_run(dev_with_metrics: tuple[str, str, str]) -> None:
    url, _, worker_metrics = dev_with_metrics
    await demo_run(url)
    async with httpx.AsyncClient() as http:
        # A server can read a TaskCompleted off the log before the worker that wrote it has its
        # acknowledgement and counts the run: scrape until the worker has counted both.
        last: dict[str, float] = {}

        async def counted_both_runs() -> dict[str, float] | None:
            last.update(series((await http.get(worker_metrics)).text))
            return last if last.get('ledger_worker_runs_finished_total{outcome="completed"}', 0) >= 2 else None
        scraped = await until(counted_both_runs, 30, failure=lambda: "runs counted: " + repr(
            {sample: count for sample, count in last.items() if sample.startswith("ledger_worker_runs_")}))
        health = await http.get(worker_metrics.replace("/metrics", "/healthz"))
    names = {sample.split("{", 1)[0] for sample in scraped}
    assert set(WORKER_SERIES) <= names, set(WORKER_SERIES) - names
    assert scraped["ledger_worker_runs_started_total"] >= 3  # the approval ran twice (it parked), the count once
    assert scraped["ledger_worker_replays_total"] >= 1
    assert scraped['ledger_worker_runs_finished_total{outcome="parked"}'] >= 1
    assert scraped['ledger_worker_runs_finished_total{outcome="completed"}'] >= 2
    assert scraped["ledger_worker_elicitation_wait_seconds_count"] >= 1
    assert any(sample.startswith("ledger_worker_consumer_lag{partition=") for sample in scraped)
    assert health.status_code == 200 and "partitions" in health.text


async def test_the_dashboard_names_only_series_that_exist(dev_with_metrics: tuple[str, str, str]) -> None:
    url, server_metrics, worker_metrics = dev_with_metrics
    await demo_run(url)
    async with httpx.AsyncClient() as http:
        served = {sample.split("{", 1)[0] for address in (server_metrics, worker_metrics)
                  for sample in series((await http.get(address)).text)}
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    named = {name for expr in exprs for name in re.findall(r"\bledger_[a-z_]+", expr)}
    assert named <= served, named - served
    assert set(WORKER_SERIES) <= named, set(WORKER_SERIES) - named  # and it shows every worker series


async def test_both_roles_serve_how_their_appends_fare(dev_with_metrics: tuple[str, str, str]) -> None:
    url, server_metrics, worker_metrics = dev_with_metrics
    await demo_run(url)
    async with httpx.AsyncClient() as http:
        for address in (server_metrics, worker_metrics):
            async def settled() -> dict[str, float] | None:
                scraped = series((await http.get(address)).text)
                return scraped if scraped.get("ledger_appends_waiting") == 0 else None
            scraped = await until(settled, 10)
            names = {sample.split("{", 1)[0] for sample in scraped}
            assert set(APPEND_SERIES) <= names, (address, set(APPEND_SERIES) - names)
            assert scraped["ledger_append_oldest_wait_seconds"] == 0
            assert scraped["ledger_producer_replacements_total"] == 0
            in_sync = {sample: count for sample, count in scraped.items()
                       if sample.startswith("ledger_partition_in_sync_replicas{")}
            assert in_sync and all(count >= 1 for count in in_sync.values()), (address, in_sync)


async def test_the_workers_metrics_refuse_another_sites_name(dev_with_metrics: tuple[str, str, str]) -> None:
    _, _, worker_metrics = dev_with_metrics
    async with httpx.AsyncClient() as http:
        assert (await http.get(worker_metrics, headers={"Host": "rebound.example"})).status_code == 421
        assert (await http.get(worker_metrics, headers={"Origin": "http://evil.example"})).status_code == 403
        assert (await http.get(worker_metrics)).status_code == 200
        health = worker_metrics.replace("/metrics", "/healthz")
        assert (await http.get(health, headers={"Host": "worker-1:9100"})).status_code == 200  # probes: any name
