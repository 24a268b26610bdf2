"""`beacon kafka init`: create the event topic and the dead-letter topic, idempotently."""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from collector.settings import PREFIX, Settings


class KafkaInitError(RuntimeError):
    """Kafka could not be reached or refused to create a topic; the message says which."""


@dataclass(frozen=True, slots=True)
class TopicStatus:
    name: str
    created: bool  # False: it existed already
    partitions: int  # as the broker reports it now
    wanted_partitions: int

    def describe(self) -> str:
        verb = "created" if self.created else "exists"
        text = f"{self.name}: {verb} ({self.partitions} partitions)"
        if self.partitions != self.wanted_partitions:
            # Never changed here: adding partitions moves keys, removing them is impossible.
            text += f"; {PREFIX}KAFKA_PARTITIONS is {self.wanted_partitions}, left as it is"
        return text


async def init_topics(settings: Settings) -> list[TopicStatus]:
    """Create settings.kafka_topic and settings.kafka_dlq_topic unless they exist."""
    if not settings.kafka_bootstrap:
        raise KafkaInitError(f"{PREFIX}KAFKA_BOOTSTRAP is empty: no Kafka to create topics on")
    names = [settings.kafka_topic, settings.kafka_dlq_topic]
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id="beacon-kafka-init",
        request_timeout_ms=settings.kafka_timeout_ms,
    )
    try:
        try:
            await admin.start()
        except KafkaError as exc:
            raise KafkaInitError(
                f"cannot reach Kafka at {settings.kafka_bootstrap} ({exc}); "
                f"is the broker running and {PREFIX}KAFKA_BOOTSTRAP right?"
            ) from None
        new = [NewTopic(n, settings.kafka_partitions, settings.kafka_replication) for n in names]
        response = await admin.create_topics(new, timeout_ms=settings.kafka_timeout_ms)
        created: dict[str, bool] = {}
        for topic, code, *message in response.topic_errors:
            if code == 0:
                created[topic] = True
            elif code == TopicAlreadyExistsError.errno:
                created[topic] = False
            else:
                text = message[0] if message and message[0] else f"error code {code}"
                raise KafkaInitError(f"cannot create topic {topic}: {text}")
        described = await admin.describe_topics(names)
        partitions = {t["topic"]: len(t["partitions"]) for t in described}
        wanted = settings.kafka_partitions
        return [TopicStatus(n, created[n], partitions.get(n, 0), wanted) for n in names]
    except KafkaError as exc:
        raise KafkaInitError(f"Kafka at {settings.kafka_bootstrap}: {exc!r}") from None
    finally:
        await admin.close()
