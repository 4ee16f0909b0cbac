"""How the roles log: timestamped lines on stderr, with the same line said at most once in a while.

While a broker is down the Kafka client logs the same failure ten times a second per connection;
a log that says it once every ``REPEAT_WINDOW_S``, with how often it happened meanwhile, stays
readable through an outage.
"""

from __future__ import annotations

import logging
import time

REPEAT_WINDOW_S = 10.0
MAX_REMEMBERED = 1_000


class QuietRepeats(logging.Filter):
    """Lets a message through once per ``REPEAT_WINDOW_S``; the next that passes counts the rest."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}  # (logger, message) -> (let through at, held back)

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.getMessage())
        now = time.monotonic()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < REPEAT_WINDOW_S:
            self._seen[key] = (seen[0], seen[1] + 1)
            return False
        if seen is not None and seen[1]:
            record.msg, record.args = f"{key[1]} (and {seen[1]} times more in {now - seen[0]:.0f} s)", ()
        if len(self._seen) >= MAX_REMEMBERED:
            self._seen.clear()
        self._seen[key] = (now, 0)
        return True


class TransientClientNoise(logging.Filter):
    """Holds back the Kafka client's lines about what a healthy cluster does on its own: a group's
    coordinator being elected on its first start, a partition's leader moving in a failover, a group
    rebalancing. aiokafka says them at WARNING or ERROR; ledger says in its own words when one lasts
    (a worker catching up late, an append waiting on a partition's leader in ``/readyz``)."""

    TRANSIENT = ("Marking the coordinator dead", "CoordinatorNotAvailable", "NotCoordinator", "LeaderNotAvailable",
                 "NotLeaderForPartition", "Got error produce response", "is rebalancing", "RebalanceInProgress")

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("aiokafka"):
            return True
        message = record.getMessage()
        return not any(transient in message for transient in self.TRANSIENT)


def configure(ledger_level: int) -> None:
    """ledger's own lines at ``ledger_level``, everyone else's (the Kafka client's) at WARNING but for
    its transient noise."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(TransientClientNoise())
        handler.addFilter(QuietRepeats())
    logging.getLogger("ledger").setLevel(ledger_level)
