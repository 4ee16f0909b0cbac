"""The roles' logging says a repeated line once in a while, with how often it was held back."""

from __future__ import annotations

import logging

from ledger.cli import logging_setup


def test_a_repeated_line_passes_once_a_window_and_then_counts_the_rest(monkeypatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(logging_setup.time, "monotonic", lambda: clock[0])
    quiet = logging_setup.QuietRepeats()

    def line(text: str) -> logging.LogRecord:
        return logging.LogRecord("aiokafka", logging.ERROR, __file__, 1, text, (), None)

    assert quiet.filter(line("Unable connect to node 2"))
    held = [quiet.filter(line("Unable connect to node 2")) for _ in range(40)]
    assert not any(held)
    assert quiet.filter(line("Unable connect to node 3")), "another line is not held back"
    clock[0] += logging_setup.REPEAT_WINDOW_S
    later = line("Unable connect to node 2")
    assert quiet.filter(later)
    assert later.getMessage() == "Unable connect to node 2 (and 40 times more in 10 s)"


def test_the_kafka_clients_transient_noise_is_held_back_and_its_failures_are_not() -> None:
    noise = logging_setup.TransientClientNoise()

    def line(logger: str, text: str) -> logging.LogRecord:
        return logging.LogRecord(logger, logging.ERROR, __file__, 1, text, (), None)

    # As aiokafka 0.14 says them on a worker group's first start on Kafka, and in a failover.
    assert not noise.filter(line("aiokafka.consumer.group_coordinator",
                                 "Group Coordinator Request failed: [Error 15] CoordinatorNotAvailableError"))
    assert not noise.filter(line("aiokafka.consumer.group_coordinator",
                                 "Marking the coordinator dead (node 2)for group ledger.workers."))
    assert not noise.filter(line("aiokafka.producer.sender", "Got error produce response on topic-partition "
                                 "TopicPartition(topic='ledger.task-events', partition=3), retrying. Error: "
                                 "[Error 6] NotLeaderForPartitionError"))
    assert noise.filter(line("aiokafka", "Unable connect to node with id 2: [Errno 111] Connect call failed"))
    assert noise.filter(line("ledger.engine.worker", "worker w: partition 3 still reading up to its claim"))
