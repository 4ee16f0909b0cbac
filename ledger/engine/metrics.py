"""What a worker shows operators at ``/metrics`` (Prometheus text format), on a port of its own
(``ledger worker --metrics-port``), beside ``/healthz``.

Counters and histograms are updated where runs start and end; the gauges (hot, parked, queued,
free slots, lag per partition, holes waited for) are read when the endpoint is scraped, through
callables the worker hands over (so this module knows nothing of the worker).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from ledger.metrics import WAIT_BUCKETS

RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
OUTCOMES = ("completed", "failed", "retrying", "parked", "stopped")


class WorkerGauges(NamedTuple):
    """What a scrape reads of a worker, each a callable."""

    hot: Callable[[], int]
    parked: Callable[[], int]
    queued: Callable[[], int]
    free_slots: Callable[[], int]
    lag: Callable[[], dict[int, int]]
    holes_waited: Callable[[], int]
    timers: Callable[[], tuple[int, float]]  # (tasks waiting on a time, seconds the most overdue is past it)


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.runs_started = Counter("ledger_worker_runs_started", "Runs of a tool this worker started: a task's first "
                                    "run, or a re-run from its journal.", registry=self.registry)
        self.runs_finished = Counter("ledger_worker_runs_finished", "Runs that ended, by outcome: completed, failed "
                                     "(the tool raised, or a re-run broke from its journal), retrying (the tool "
                                     "raised, and its retry policy runs it again), parked (waiting for a person, a "
                                     "sleep or a retry, its coroutine dropped), stopped (cancelled, expired, moved "
                                     "away).",
                                     ["outcome"], registry=self.registry)
        for outcome in OUTCOMES:
            self.runs_finished.labels(outcome)
        self.replays = Counter("ledger_worker_replays", "Runs that re-ran a tool from its journal (a resume after "
                               "parking, a restart, a handover).", registry=self.registry)
        self.nondeterminism_errors = Counter("ledger_worker_nondeterminism_errors", "Re-runs that asked or did "
                                             "something other than their journal holds (NonDeterminismError).",
                                             registry=self.registry)
        self.run_seconds = Histogram("ledger_worker_run_seconds", "How long a run took, from its start to its end "
                                     "or to parking.", buckets=RUN_BUCKETS, registry=self.registry)
        self.elicitation_wait = Histogram("ledger_worker_elicitation_wait_seconds", "Time from a question being "
                                          "asked to its answer, as this worker reads them.", buckets=WAIT_BUCKETS,
                                          registry=self.registry)

    def watch(self, gauges: WorkerGauges) -> None:
        self.registry.register(_WorkerSnapshot(gauges))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _WorkerSnapshot(Collector):
    def __init__(self, gauges: WorkerGauges) -> None:
        self._gauges = gauges

    def collect(self) -> Iterator[Metric]:
        gauges = self._gauges
        yield GaugeMetricFamily("ledger_worker_hot_tasks", "Waiting tools kept in memory for an in-place resume.",
                                value=gauges.hot())
        yield GaugeMetricFamily("ledger_worker_parked_tasks", "Tasks waiting for a person with nothing in memory "
                                "but their journal.", value=gauges.parked())
        yield GaugeMetricFamily("ledger_worker_queued_runs", "Runs waiting for a free slot.", value=gauges.queued())
        yield GaugeMetricFamily("ledger_worker_free_slots", "Runs this worker could start now "
                                "(LEDGER_WORKER_CONCURRENCY minus the runs holding a slot).",
                                value=gauges.free_slots())
        lag = GaugeMetricFamily("ledger_worker_consumer_lag", "Events past what this worker has read, per "
                                "partition it owns.", labels=["partition"])
        for partition, behind in sorted(gauges.lag().items()):
            lag.add_metric([str(partition)], behind)
        yield lag
        pending, overdue = gauges.timers()
        yield GaugeMetricFamily("ledger_worker_timers_pending", "Tasks waiting on a time: a sleep, or a question "
                                "with a deadline.", value=pending)
        yield GaugeMetricFamily("ledger_worker_timer_overdue_seconds", "How long past its time the most overdue "
                                "of them is (0 when none is due): its timeout or wake-up not yet on the log.",
                                value=overdue)
        yield CounterMetricFamily("ledger_worker_holes_waited", "Fetches that stopped at a gap in a partition's "
                                  "offsets and waited for it (embedded broker).", value=gauges.holes_waited())


def metrics_app(metrics: WorkerMetrics, health: Callable[[], str]) -> Starlette:
    """``/metrics`` and ``/healthz`` (200 while the worker runs and owns partitions or waits for them;
    ``health`` says which)."""
    async def metrics_text(request: Request) -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        return PlainTextResponse(f"ok: {health()}\n")

    return Starlette(routes=[Route("/metrics", metrics_text), Route("/healthz", healthz)])

