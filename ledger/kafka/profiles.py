"""What ledger may rely on from the broker it talks to: one profile per kind of broker.

Everything ledger does differently on the embedded broker (Tansu) lives in the ``TANSU`` profile
and is chosen by what the broker is, never by a setting: Tansu serves a later batch of a partition
before an earlier one under load, holds an empty fetch for its whole wait, under-reports
``end_offsets()`` and has no idempotent producer (docs/operations.md, "The embedded broker"). Apache Kafka (``KAFKA``)
does none of that, so there ledger uses what Kafka gives: the idempotent producer, fetches that
return as soon as an event arrives, and the end offsets the broker reports.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from dataclasses import dataclass

from aiokafka import AIOKafkaClient
from aiokafka.protocol.admin import ApiVersionRequest

log = logging.getLogger(__name__)

# OffsetForLeaderEpoch: what a replica asks a new leader before truncating its log. Every Apache
# Kafka broker since 0.11 serves it; Tansu, which does not replicate, does not advertise it.
OFFSET_FOR_LEADER_EPOCH = 23
PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True, slots=True)
class BrokerProfile:
    name: str
    description: str
    idempotent_producer: bool  # InitProducerId works: the producer's retries are de-duplicated by the broker
    answers_fetch_early: bool  # an empty fetch returns as soon as an event arrives (a long poll costs no latency)
    serves_batches_in_order: bool  # a partition's batches become readable in offset order
    exact_end_offsets: bool  # ListOffsets(latest) is the true end of a partition
    # Partitions of a topic ledger creates unless LEDGER_PARTITIONS says: on Kafka each partition costs
    # the brokers CPU for every batch and every fetch (bench/flow.py: 8 instead of 32 partitions is 38 %
    # more flows/s at C=64); the embedded broker's fetch cost grows with the batches a partition holds.
    default_partitions: int


KAFKA = BrokerProfile(
    "kafka", "Apache Kafka (or a broker that replicates like it)",
    idempotent_producer=True, answers_fetch_early=True, serves_batches_in_order=True, exact_end_offsets=True,
    default_partitions=8,
)
TANSU = BrokerProfile(
    "tansu", "Tansu, the embedded broker (no idempotent producer, paced fetches, holes waited for)",
    idempotent_producer=False, answers_fetch_early=False, serves_batches_in_order=False, exact_end_offsets=False,
    default_partitions=32,
)

_known: dict[str, BrokerProfile] = {}


def profile_for(advertised_apis: set[int]) -> BrokerProfile:
    return KAFKA if OFFSET_FOR_LEADER_EPOCH in advertised_apis else TANSU


class NotKafka(ConnectionError):
    """Something answers at the bootstrap address, but not as a Kafka broker."""


class KafkaUnreachable(ConnectionError):
    """Nothing accepts connections at any bootstrap address."""


async def check_bootstrap(bootstrap: str) -> None:
    """Fail within seconds, saying what answered, when LEDGER_BOOTSTRAP names something that is not
    Kafka (the Kafka client would wait ~40 s for an answer that never comes). An address that
    refuses connections is left to the client, which says it cannot reach Kafka."""
    if bootstrap in _known:
        return
    for address in bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        verdict = await asyncio.to_thread(_probe, host.strip("[]"), int(port))
        if verdict == "":
            return
        if verdict is not None:
            raise NotKafka(f"{address.strip()} {verdict}; check LEDGER_BOOTSTRAP")
    raise KafkaUnreachable(f"cannot reach Kafka at {bootstrap}: nothing accepts connections there; start a broker "
                           "(`ledger broker`, or `compose/local-cluster` for Apache Kafka) or set LEDGER_BOOTSTRAP")


def _probe(host: str, port: int) -> str | None:
    """'' when a Kafka broker answers; why not otherwise; None when nothing listens there."""
    client_id = b"ledger-probe"
    correlation_id = 0x1ED6E3
    request = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id  # ApiVersions v0
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S) as conn:
            conn.sendall(struct.pack(">i", len(request)) + request)
            try:
                answer = conn.recv(256)
            except TimeoutError:
                return (f"accepted a connection but did not answer a Kafka request within {PROBE_TIMEOUT_S:g} s: "
                        "it is not a Kafka broker (or not its plaintext listener)")
    except OSError:
        return None
    if len(answer) >= 8 and struct.unpack(">i", answer[4:8])[0] == correlation_id:
        return ""
    shown = answer[:60].decode("ascii", "replace").splitlines()[0] if answer else "nothing, and closed the connection"
    return f"answered, but not as a Kafka broker (it sent {shown!r})"


async def broker_profile(bootstrap: str) -> BrokerProfile:
    """The profile of the broker at ``bootstrap``: asked once per process (an ApiVersions request)."""
    if (known := _known.get(bootstrap)) is not None:
        return known
    await check_bootstrap(bootstrap)
    client = AIOKafkaClient(bootstrap_servers=bootstrap, client_id="ledger-profile")
    try:
        await client.bootstrap()
        response = await client.send(client.get_random_node(), ApiVersionRequest())
    finally:
        await client.close()
    profile = _known[bootstrap] = profile_for({api_key for api_key, *_ in response.api_versions})
    log.info("broker at %s: %s", bootstrap, profile.description)
    return profile
