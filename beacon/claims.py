"""Which roles of the data directory a command takes (contract/owner.py), and what a command
refused one is told to do."""

from __future__ import annotations

from collections.abc import Mapping

from collector.settings import Settings
from consumers.settings import ConsumerSettings
from contract import owner

# What to do when the data directory is someone else's, by command (contract/owner.py).
IN_USE_ADVICE = {
    "migrate": "it migrated the store as it started; stop it first to migrate by hand",
    "settle": "its consumer settles the rollups by itself; stop it first to settle by hand",
}
IN_USE_DEFAULT = "stop it first (kill -TERM {pid}), or give this one a --data-dir of its own"


def claim_data_dir(
    command: str, settings: Settings, consumer: ConsumerSettings, env: Mapping[str, str]
) -> dict[str, owner.Claim]:
    """The roles of the data directory this command takes (contract/owner.py): the collector
    when it writes the spool, the consumer when it reads the spool or opens the embedded store,
    and the spool's reader: the collector that sends it to Kafka or the consumer that stores it.
    Children of `beacon run` and of `serve --workers` find theirs passed down."""
    embedded_store = not consumer.clickhouse_url
    reads_spool = not consumer.kafka_bootstrap
    roles = []
    if command in ("serve", "run") and settings.sink != "memory":
        roles.append((settings.data_dir, owner.COLLECTOR))
        if settings.uses_kafka:  # its replay sends the spool to Kafka
            roles.append((settings.data_dir, owner.SPOOL_READER))
    if (command in ("consume", "run") and (reads_spool or embedded_store)) or (
        command in ("migrate", "settle") and embedded_store
    ):
        roles.append((consumer.data_dir, owner.CONSUMER))
    if command in ("consume", "run") and reads_spool:
        roles.append((consumer.data_dir, owner.SPOOL_READER))
    passed = owner.inherited(env.get(owner.CLAIMS_ENV, ""))
    store_url = consumer.store_url if command in ("consume", "run") else ""
    claims: dict[str, owner.Claim] = {}
    try:
        for data_dir, role in roles:
            claims[role] = owner.claim(data_dir, role, f"beacon {command}", passed, store_url)
    except owner.InUse:
        for held in claims.values():  # all or none: a refused command holds nothing
            owner.release(held)
        raise
    return claims
