"""Publishing to Kafka with acks=all and the idempotent producer.

`send` returns only when Kafka acknowledged every record of the batch; the outbox relay removes
records from the outbox only after that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

from watcher.config import KafkaConfig
from watcher.store import OutboxEntry


class PublishError(Exception):
    """Kafka did not acknowledge every record of a batch."""


def kafka_client_options(config: KafkaConfig) -> dict[str, Any]:
    """Connection and security options shared by the producer and the `tail` consumer."""
    options: dict[str, Any] = {
        "bootstrap_servers": config.bootstrap_servers.split(","),
        "client_id": config.client_id,
        "request_timeout_ms": int(config.request_timeout.total_seconds() * 1000),
        "security_protocol": config.security_protocol,
    }
    if config.security_protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        options["ssl_context"] = create_ssl_context(
            cafile=str(config.ssl_cafile) if config.ssl_cafile else None,
            certfile=str(config.ssl_certfile) if config.ssl_certfile else None,
            keyfile=str(config.ssl_keyfile) if config.ssl_keyfile else None,
            password=config.ssl_password.get_secret_value() if config.ssl_password else None,
        )
    if config.sasl_mechanism is not None:
        options["sasl_mechanism"] = config.sasl_mechanism
        options["sasl_plain_username"] = config.sasl_plain_username
        if config.sasl_plain_password is not None:
            options["sasl_plain_password"] = config.sasl_plain_password.get_secret_value()
    return options


def build_producer(config: KafkaConfig) -> AIOKafkaProducer:
    """A producer that loses nothing it acknowledged and writes nothing twice on retry."""
    return AIOKafkaProducer(
        **kafka_client_options(config),
        acks="all",
        enable_idempotence=True,
        linger_ms=config.linger_ms,
        max_batch_size=config.max_batch_bytes,
        compression_type=None if config.compression_type == "none" else config.compression_type,
    )


class KafkaPublisher:
    """Sends outbox entries to the configured topics, keyed by account, and waits for every ack."""

    def __init__(self, producer: AIOKafkaProducer, config: KafkaConfig) -> None:
        self._producer = producer
        self._topics = {"changes": config.changes_topic, "alerts": config.alerts_topic}

    async def send(self, entries: Sequence[OutboxEntry]) -> None:
        """Send in order (the producer keeps order per partition), then wait for every ack."""
        await (await self.append(entries))

    async def append(self, entries: Sequence[OutboxEntry]) -> asyncio.Future[None]:
        """Hand `entries` to the producer, in order, and return at once: the returned future completes
        when Kafka acknowledged all of them, or fails with PublishError. Raises PublishError when the
        producer refuses one."""
        try:
            futures = [
                await self._producer.send(
                    self._topics[e.topic], value=e.value, key=e.key.encode(), headers=list(e.headers)
                )
                for e in entries
            ]
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise PublishError(f"Kafka refused {len(entries)} event(s): {exc!r}") from exc
        return asyncio.ensure_future(_acknowledged(futures, len(entries)))

    async def flush(self) -> None:
        """Wait until everything queued is acknowledged."""
        await self._producer.flush()


async def _acknowledged(futures: list[asyncio.Future[Any]], count: int) -> None:
    try:
        await asyncio.gather(*futures)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        raise PublishError(f"Kafka did not acknowledge {count} event(s): {exc!r}") from exc
