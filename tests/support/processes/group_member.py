"""A consumer-group member in its own process, for handover tests that SIGKILL it.

Usage: python -m tests.support.processes.group_member BOOTSTRAP PREFIX PARTITIONS GROUP COUNT
Consumes COUNT events, commits the next offsets, prints them as one JSON line, then idles.
"""

from __future__ import annotations

import asyncio
import json
import sys

from ledger.kafka.group import GroupConsumer
from ledger.settings import Settings


async def main(bootstrap: str, prefix: str, partitions: str, group: str, count: str) -> None:
    settings = Settings.from_env(
        bootstrap=bootstrap, topic_prefix=prefix, partitions=int(partitions), session_timeout_ms=6_000
    )
    consumer = GroupConsumer(settings, group)
    await consumer.start()
    seen: dict[int, int] = {}
    consumed = 0
    while consumed < int(count):
        for record in await consumer.fetch(timeout_ms=200):
            if consumed == int(count):
                break
            seen[record.partition] = record.offset + 1
            consumed += 1
    await consumer.commit(seen)
    print(json.dumps({"committed": seen}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
