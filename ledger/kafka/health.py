"""Whether the log can take a server's writes now, and if not, why: what ``/readyz`` reports.

Two signs, both cheap: the brokers a server can reach against the ``min.insync.replicas`` of the
task-events topic (fewer reachable than that, and no write can be confirmed), and how long the
oldest append has waited for the log's confirmation. Kafka's own metadata cannot tell: a cluster
that lost its controller quorum keeps describing its dead brokers as in sync.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from aiokafka.admin import AIOKafkaAdminClient

from ledger.kafka.appender import EventLog
from ledger.kafka.profiles import broker_profile
from ledger.kafka.security import connection
from ledger.kafka.topics import min_insync_replicas
from ledger.settings import Settings

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 0.5
# An append confirmed within this is normal; one waiting longer waits on a failover (or a slow disk).
DEGRADED_AFTER_S = 1.0
REACHABILITY_TTL_S = 1.0


class LogHealth:
    def __init__(self, settings: Settings, event_log: EventLog) -> None:
        self.settings = settings
        self._log = event_log
        self._needed_in_sync = 1
        self._checked_at = 0.0
        self._unreachable: list[str] = []

    async def start(self) -> None:
        """Learn the topic's min.insync.replicas (once, at start, while the brokers answer)."""
        if (await broker_profile(self.settings)).name != "kafka":
            return
        admin = AIOKafkaAdminClient(**connection(self.settings),
                                    client_id=f"{self.settings.client_id}-health")
        try:
            await admin.start()
            self._needed_in_sync = await min_insync_replicas(admin, self.settings.events_topic)
        except Exception as exc:  # readiness then judges by confirmations alone
            log.warning("could not read min.insync.replicas of %s: %s", self.settings.events_topic, exc)
        finally:
            await admin.close()

    async def problem(self) -> str | None:
        """Why the log cannot take this server's writes now (None when nothing says so)."""
        problem = await self._problem()
        if problem is not None:
            # The brokers listed are those the metadata last named: ask again, so that brokers that
            # left or came back count at the next look.
            self._log.refresh_metadata()
        return problem

    async def _problem(self) -> str | None:
        brokers = self._log.brokers()
        unreachable = await self._unreachable_brokers(brokers)
        reachable = len(brokers) - len(unreachable)
        if reachable < self._needed_in_sync:
            down = f"; {', '.join(unreachable)} not answering" if unreachable else ""
            return (f"only {reachable} broker(s) reachable of the {len(brokers)} the cluster lists{down}: the log "
                    f"needs {self._needed_in_sync} in sync to confirm a write")
        waited = self._log.unconfirmed_for()
        if waited > self._log.deadline:
            return (f"the log has not confirmed a write for {waited:.0f} s ({reachable} of {len(brokers)} brokers "
                    f"reachable)")
        return None

    def degraded(self) -> str | None:
        """What slows this server's writes while it can still take them: an append waiting on a failover."""
        stalled = self._log.stalled_partition(DEGRADED_AFTER_S)
        if stalled is None:
            return None
        partition, since = stalled
        where = f"partition {partition}'s leader" if partition is not None else "the log"
        return f"waiting on {where} since {datetime.fromtimestamp(since, UTC).isoformat(timespec='seconds')}"

    async def _unreachable_brokers(self, brokers: list[tuple[str, int]]) -> list[str]:
        if time.monotonic() - self._checked_at > REACHABILITY_TTL_S:
            answers = await asyncio.gather(*(_answers(host, port) for host, port in brokers))
            self._unreachable = [f"{host}:{port}" for (host, port), up in zip(brokers, answers) if not up]
            self._checked_at = time.monotonic()
        return self._unreachable


async def _answers(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True
