"""What a server shows operators at ``/metrics`` (Prometheus text format).

Counters and histograms are updated where things happen; the task counts by status and the
consumer lag are read when the endpoint is scraped. One registry per server app, so several
apps in one process (tests) keep their own series.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

STATUSES = ("working", "input_required", "completed", "failed", "cancelled")
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
WAIT_BUCKETS = (1, 5, 15, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events_appended = Counter("ledger_events_appended", "Events this process appended to the log.",
                                       ["type"], registry=self.registry)
        self.events_consumed = Counter("ledger_events_consumed", "Events this process read from the log.",
                                       registry=self.registry)
        self.rejected_inputs = Counter("ledger_rejected_inputs", "Requests that addressed a task and were refused "
                                       "(each also a RequestRejected event).", ["operation", "reason"],
                                       registry=self.registry)
        self.dropped_audit_records = Counter("ledger_dropped_audit_records", "Records of refused requests not "
                                             "written because their principal was over its write budget.",
                                             registry=self.registry)
        self.request_seconds = Histogram("ledger_request_seconds", "Time to answer an MCP request.", ["method"],
                                         buckets=REQUEST_BUCKETS, registry=self.registry)
        self.elicitation_wait = Histogram("ledger_elicitation_wait_seconds", "Time from a question being asked "
                                          "to its answer being applied.", buckets=WAIT_BUCKETS,
                                          registry=self.registry)

    def watch(self, tasks_by_status: Callable[[], dict[str, int]], lag: Callable[[], int],
              dead_letters: Callable[[], int]) -> None:
        """Series read at scrape time: tasks by status, how far behind the log this server is, and
        how many undecodable records it skipped."""
        self.registry.register(_Snapshot(tasks_by_status, lag, dead_letters))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Snapshot(Collector):
    def __init__(self, tasks_by_status: Callable[[], dict[str, int]], lag: Callable[[], int],
                 dead_letters: Callable[[], int]) -> None:
        self._tasks_by_status = tasks_by_status
        self._lag = lag
        self._dead_letters = dead_letters

    def collect(self) -> Iterator[GaugeMetricFamily]:
        tasks = GaugeMetricFamily("ledger_tasks", "Tasks by status, as this server's projection store holds them.",
                                  labels=["status"])
        counts = self._tasks_by_status()
        for status in STATUSES:
            tasks.add_metric([status], counts.get(status, 0))
        yield tasks
        yield GaugeMetricFamily("ledger_consumer_lag", "Events on the topic this server has not applied yet.",
                                value=self._lag())
        yield GaugeMetricFamily("ledger_undecodable_records", "Records on the topic this server could not decode "
                                "and skipped (corrupt, or an unknown schema).", value=self._dead_letters())
