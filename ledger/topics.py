"""Create and verify the ledger's topics."""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from ledger.settings import Settings

TOPIC_ALREADY_EXISTS = 36


class TopicError(RuntimeError):
    """A topic is missing, could not be created, or does not match the settings."""


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    configs: dict[str, str]


def topic_specs(settings: Settings) -> list[TopicSpec]:
    # The log is the truth (DESIGN.md §1): task events are never deleted by retention.
    keep_forever = {"retention.ms": "-1", "retention.bytes": "-1"}
    mir = settings.effective_min_insync_replicas
    if mir is not None:
        keep_forever["min.insync.replicas"] = str(mir)
    return [
        TopicSpec(settings.events_topic, settings.partitions, {**keep_forever, "cleanup.policy": "delete"}),
        # Keyed by the source record's position, so compaction keeps one copy however many
        # readers report the same bad record.
        TopicSpec(settings.dead_letter_topic, 1, {**keep_forever, "cleanup.policy": "compact"}),
    ]


async def ensure_topics(settings: Settings) -> dict[str, int]:
    """Create missing topics; check existing ones. Returns partitions per topic."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap, client_id=f"{settings.client_id}-admin")
    await admin.start()
    try:
        specs = topic_specs(settings)
        existing = set(await admin.list_topics())
        missing = [spec for spec in specs if spec.name not in existing]
        if missing:
            await _create(admin, settings, missing)
        return await _verify(admin, specs)
    finally:
        await admin.close()


async def _create(admin: AIOKafkaAdminClient, settings: Settings, specs: list[TopicSpec]) -> None:
    response = await admin.create_topics(
        [NewTopic(s.name, s.partitions, settings.replication_factor, topic_configs=s.configs) for s in specs]
    )
    for name, code, message in response.topic_errors:
        if code not in (0, TOPIC_ALREADY_EXISTS):  # another process may have created it meanwhile
            raise TopicError(f"could not create topic {name}: Kafka error {code} ({message})")


async def _verify(admin: AIOKafkaAdminClient, specs: list[TopicSpec]) -> dict[str, int]:
    described = {t["topic"]: t for t in await admin.describe_topics([s.name for s in specs])}
    partitions = {}
    for spec in specs:
        topic = described.get(spec.name)
        if topic is None or topic["error_code"] != 0:
            raise TopicError(f"topic {spec.name} is not available (describe returned {topic})")
        count = len(topic["partitions"])
        if spec.name.endswith(".task-events") and count != spec.partitions:
            raise TopicError(
                f"topic {spec.name} has {count} partitions but LEDGER_PARTITIONS is {spec.partitions}: "
                "a task's events must stay in one partition, so set LEDGER_PARTITIONS to match the topic"
            )
        partitions[spec.name] = count
    return partitions
