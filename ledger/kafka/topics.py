"""Create and verify the ledger's topics."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAuthorizationFailedError
from aiokafka.protocol.metadata import MetadataRequest

from ledger.kafka.profiles import broker_profile, check_bootstrap
from ledger.kafka.security import connection, not_allowed
from ledger.settings import WEB_SESSION_S, Settings

log = logging.getLogger(__name__)

TOPIC_ALREADY_EXISTS = 36
VISIBLE_TIMEOUT_S = 30.0


class TopicError(RuntimeError):
    """A topic is missing, could not be created, or does not match the settings."""


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    configs: dict[str, str]


def topic_specs(settings: Settings, replicas: int, partitions: int) -> list[TopicSpec]:
    # The log is the truth (docs/architecture.md, the invariants): task events are never deleted by retention.
    keep_forever = {"retention.ms": "-1", "retention.bytes": "-1"}
    # Always set: a topic given fewer replicas than the brokers' min.insync.replicas could never be written.
    keep_forever["min.insync.replicas"] = str(settings.min_insync_replicas or default_min_insync(replicas))
    return [
        TopicSpec(settings.events_topic, partitions, {**keep_forever, "cleanup.policy": "delete"}),
        # Keyed by the source record's position, so compaction keeps one copy however many
        # readers report the same bad record.
        TopicSpec(settings.dead_letter_topic, 1, {**keep_forever, "cleanup.policy": "compact"}),
        # A sign-out matters only while its web session could still be used (ledger.kafka.signouts).
        TopicSpec(settings.sign_outs_topic, 1, {"min.insync.replicas": keep_forever["min.insync.replicas"],
                                                "cleanup.policy": "delete", "retention.ms": str(WEB_SESSION_S * 1000)}),
    ]


def default_min_insync(replicas: int) -> int:
    """Two copies of every acknowledged event where there are three or more replicas; one otherwise."""
    return 2 if replicas >= 3 else 1


async def ensure_topics(settings: Settings) -> dict[str, int]:
    """Create missing topics; check existing ones. Returns partitions per topic.

    Returns once every broker knows the topics and each partition has a leader, so that any
    client started next finds them.
    """
    await check_bootstrap(settings)
    admin = AIOKafkaAdminClient(**connection(settings), client_id=f"{settings.client_id}-admin")
    await admin.start()
    try:
        brokers = [broker["node_id"] for broker in (await admin.describe_cluster())["brokers"]]
        replicas = settings.replication_factor or await _default_replicas(admin, settings, brokers)
        partitions = settings.partitions or (await broker_profile(settings)).default_partitions
        specs = topic_specs(settings, replicas, partitions)
        existing = set(await admin.list_topics())
        missing = [spec for spec in specs if spec.name not in existing]
        if missing:
            await _create(admin, settings, replicas, missing)
        await _visible_everywhere(admin, brokers, specs)
        found = await _verify(admin, specs, settings.partitions)
        if len(brokers) > 1:
            await _check_replication(admin, settings, specs[0].name)
        return found
    finally:
        await admin.close()


async def _default_replicas(admin: AIOKafkaAdminClient, settings: Settings, brokers: list[int]) -> int:
    """The brokers' default.replication.factor on Kafka; min(3, brokers) where it cannot be asked."""
    if (await broker_profile(settings)).name == "kafka":
        response = (await admin.describe_configs(
            [ConfigResource(ConfigResourceType.BROKER, str(brokers[0]), {"default.replication.factor": None})]))[0]
        for _, _, _, _, configs in response.resources:
            for name, value, *_ in configs:
                if name == "default.replication.factor" and value is not None:
                    return min(int(value), len(brokers))
    return min(3, len(brokers))


async def _create(admin: AIOKafkaAdminClient, settings: Settings, replicas: int, specs: list[TopicSpec]) -> None:
    response = await admin.create_topics([NewTopic(s.name, s.partitions, replicas, topic_configs=s.configs)
                                          for s in specs])
    for name, code, message in response.topic_errors:
        if code == TopicAuthorizationFailedError.errno:
            raise not_allowed(settings, f"create topic {name} (a principal that may can make them beforehand: "
                                        "ledger topics --create)")
        if code not in (0, TOPIC_ALREADY_EXISTS):  # another process may have created it meanwhile
            raise TopicError(f"could not create topic {name}: Kafka error {code} ({message})")
        if code == 0:
            log.info("created topic %s with %d replicas", name, replicas)


async def _visible_everywhere(admin: AIOKafkaAdminClient, brokers: list[int], specs: list[TopicSpec]) -> None:
    """Wait until each broker's metadata has the topics with a leader for every partition.

    A Kafka cluster answers CreateTopics before every broker has the new topic's metadata; a client
    that asked another broker right after would be told the topic does not exist.
    """
    names = [spec.name for spec in specs]
    deadline = asyncio.get_running_loop().time() + VISIBLE_TIMEOUT_S
    for node in brokers:
        while True:
            response = await admin._send_request_to_node(node, MetadataRequest(names))
            topics = response.to_object()["topics"]
            if len(topics) == len(names) and all(
                t["error_code"] == 0 and t["partitions"] and all(p["leader"] >= 0 for p in t["partitions"])
                for t in topics
            ):
                break
            if asyncio.get_running_loop().time() > deadline:
                raise TopicError(f"broker {node} did not show topics {names} with leaders within "
                                 f"{VISIBLE_TIMEOUT_S:.0f} s: {topics}")
            await asyncio.sleep(0.05)


async def _verify(admin: AIOKafkaAdminClient, specs: list[TopicSpec], asked: int | None) -> dict[str, int]:
    """Partitions per topic; a task-events topic must have the partitions LEDGER_PARTITIONS asks for."""
    described = {t["topic"]: t for t in await admin.describe_topics([s.name for s in specs])}
    partitions = {}
    for spec in specs:
        topic = described.get(spec.name)
        if topic is None or topic["error_code"] != 0:
            raise TopicError(f"topic {spec.name} is not available (describe returned {topic})")
        count = len(topic["partitions"])
        if spec.name.endswith(".task-events") and asked is not None and count != asked:
            raise TopicError(
                f"topic {spec.name} has {count} partitions but LEDGER_PARTITIONS is {asked}: "
                "a task's events must stay in one partition, so set LEDGER_PARTITIONS to match the topic"
            )
        partitions[spec.name] = count
    return partitions


async def _check_replication(admin: AIOKafkaAdminClient, settings: Settings, topic: str) -> None:
    """Refuse a topic that cannot lose a broker and still take writes, unless the replication it has
    is the replication asked for (LEDGER_REPLICATION_FACTOR)."""
    described = (await admin.describe_topics([topic]))[0]
    replicas = min(len(p["replicas"]) for p in described["partitions"])
    min_insync = await min_insync_replicas(admin, topic)
    if replicas < min_insync:
        raise TopicError(f"topic {topic} has {replicas} replica(s) but min.insync.replicas {min_insync}: no write "
                         f"can ever succeed. Recreate it with at least {min_insync + 1} replicas")
    if replicas >= min_insync + 1:
        return
    if settings.replication_factor == replicas:
        log.warning("topic %s has %d replicas and min.insync.replicas %d: writes stop while any replica is down "
                    "(running on it as LEDGER_REPLICATION_FACTOR=%d asks)", topic, replicas, min_insync, replicas)
        return
    raise TopicError(
        f"topic {topic} has {replicas} replica(s) and min.insync.replicas {min_insync}: losing one broker would "
        f"stop every write. Recreate it with at least {min_insync + 1} replicas, or set "
        f"LEDGER_REPLICATION_FACTOR={replicas} to run on it as it is"
    )


async def min_insync_replicas(admin: AIOKafkaAdminClient, topic: str) -> int:
    """The topic's min.insync.replicas (1 when the broker does not say)."""
    response = (await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, topic, {"min.insync.replicas": None})]))[0]
    return next((int(value) for *_, configs in response.resources for name, value, *_ in configs
                 if name == "min.insync.replicas" and value is not None), 1)
