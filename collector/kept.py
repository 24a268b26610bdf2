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
from contract.segments import fsync_dir

SECRET_FILE = "secret"
SIGNING_KEY_FILE = "signing-keys"  # `kid:secret` lines, as BEACON_SIGNING_KEY_FILE reads them


def _keep(path: Path, make: str, what: str, consequence: str) -> str:
    """The text kept at `path`, written there as `make` by the first process to ask.

    Written whole and synced under a name of this process's, then linked to `path`, which
    fails if another process kept its own first: `path` never holds a partial text. Neither a
    process starting beside this one nor one starting after a crash, a full disk or a power
    loss reads an empty file (which refuses every start until removed), and a secret once used
    is on disk (a lost one changes every visitor id)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        staged = path.with_name(f".{path.name}.{os.getpid()}")
        try:
            with open(os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
                f.write(make + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.link(staged, path)
            fsync_dir(path.parent)
            return make
        except FileExistsError:
            pass  # another process's, read below
        finally:
            staged.unlink(missing_ok=True)
    text = path.read_text().strip()
    # Only a file made before texts were linked whole, or edited by hand: never use it.
    if len(text) < MIN_SECRET_CHARS:
        raise SettingsError(
            f"{path}: {what} shorter than {MIN_SECRET_CHARS} chars; "
            f"remove the file to make a new one ({consequence})"
        )
    return text


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
