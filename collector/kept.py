"""Secrets a collector keeps in its data directory when none is configured: the visitor-id
secret and a URL signing key. Kept on disk so they survive restarts and agree across the
processes of one data directory: every worker hashes visitor ids alike, and `beacon url`
signs links with the key the collector on the same data directory checks."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from collector.settings import Settings
from contract.config import MIN_SECRET_CHARS, SettingsError

SECRET_FILE = "secret"
SIGNING_KEY_FILE = "signing-keys"  # `kid:secret` lines, as BEACON_SIGNING_KEY_FILE reads them


def _keep(path: Path, make: str, what: str, consequence: str) -> str:
    """The text kept at `path`, written there as `make` by the first process to ask."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        text = path.read_text().strip()
        # Empty when a start died between making the file and writing it: never use it.
        if len(text) < MIN_SECRET_CHARS:
            raise SettingsError(
                f"{path}: {what} shorter than {MIN_SECRET_CHARS} chars; "
                f"remove the file to make a new one ({consequence})"
            ) from None
        return text
    with os.fdopen(fd, "w") as f:
        f.write(make + "\n")
    return make


def resolve_secret(settings: Settings) -> Settings:
    """Settings with a visitor-id secret: the configured one, or the one kept in data_dir."""
    if settings.secret:
        return settings
    secret = _keep(
        settings.data_dir / SECRET_FILE,
        os.urandom(32).hex(),
        "visitor-id secret",
        "visitor ids then change",
    )
    return dataclasses.replace(settings, secret=secret)


def resolve_signing_keys(settings: Settings) -> Settings:
    """Settings with a signing key: the configured ones, or the key kept in data_dir.

    Without one every click link is refused, so the collector and `beacon url` on the same
    data directory share a kept key unless keys are set (BEACON_SIGNING_KEYS or _FILE). Not
    with Kafka: there collectors are many, each with a data directory of its own, and a key
    kept by each would refuse the others' links; they need keys set alike."""
    if settings.signing_keys or settings.signing_key_file is not None or settings.uses_kafka:
        return settings
    path = settings.data_dir / SIGNING_KEY_FILE
    kid = time.strftime("k%Y%m%d", time.gmtime())
    _keep(path, f"{kid}:{os.urandom(32).hex()}", "signing key", "links signed with it break")
    return dataclasses.replace(settings, signing_key_file=path)


def resolve_kept(settings: Settings) -> Settings:
    """Both: what a collector and `beacon url` start with."""
    return resolve_signing_keys(resolve_secret(settings))
