from __future__ import annotations

import pytest

from ledger.settings import Settings, SettingsError, describe


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.bootstrap == "127.0.0.1:9092"
    assert settings.events_topic == "ledger.task-events"
    assert settings.replication_factor is None and settings.min_insync_replicas is None


def test_environment_overrides_and_topic_names() -> None:
    settings = Settings.from_env(
        {"LEDGER_BOOTSTRAP": "k1:9092,k2:9092", "LEDGER_TOPIC_PREFIX": "prod", "LEDGER_REPLICATION_FACTOR": "3"}
    )
    assert settings.bootstrap == "k1:9092,k2:9092"
    assert settings.dead_letter_topic == "prod.dead-letters"
    assert settings.replication_factor == 3


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"LEDGER_PARTITIONS": "many"}, "LEDGER_PARTITIONS must be a whole number"),
        ({"LEDGER_PARTITIONS": "0"}, "LEDGER_PARTITIONS must be at least 1"),
        ({"LEDGER_BOOTSTRAP": "localhost"}, "LEDGER_BOOTSTRAP must be host:port"),
        ({"LEDGER_MIN_INSYNC_REPLICAS": "3", "LEDGER_REPLICATION_FACTOR": "2"},
         "LEDGER_MIN_INSYNC_REPLICAS .3. must not exceed LEDGER_REPLICATION_FACTOR .2."),
        ({"LEDGER_REPLICATION_FACTOR": "0"}, "LEDGER_REPLICATION_FACTOR must be at least 1"),
        ({"LEDGER_LINGER_MS": "-1"}, "LEDGER_LINGER_MS must not be negative"),
        ({"LEDGER_SETTLE_MS": "-5"}, "LEDGER_SETTLE_MS must not be negative"),
        ({"LEDGER_FETCH_MAX_WAIT_MS": "50", "LEDGER_IDLE_FETCH_WAIT_MS": "20"},
         "LEDGER_IDLE_FETCH_WAIT_MS .20. must not be less than LEDGER_FETCH_MAX_WAIT_MS .50."),
    ],
)
def test_bad_values_are_named(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(environ)


def test_help_table_lists_every_variable() -> None:
    table = describe()
    for name in ("LEDGER_BOOTSTRAP", "LEDGER_TOPIC_PREFIX", "LEDGER_PARTITIONS", "LEDGER_REPLICATION_FACTOR"):
        assert name in table
