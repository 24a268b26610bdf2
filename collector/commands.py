"""The collector's commands: `beacon serve`, `beacon kafka init`, `beacon url` (beacon/ only
parses the command line and calls these)."""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

from collector.settings import Settings


def serve_command(settings: Settings, env: Mapping[str, str], workers: int | None) -> int:
    """One collector process, or `workers` of them on one port."""
    from collector.workers import LISTEN_FD_ENV, MULTIPROC_ENV, default_workers, run_workers

    count = workers or default_workers()
    if count > 1:
        return run_workers(settings, dict(env), count)
    import uvloop

    from collector.server import serve

    # Set by run_workers for its workers (or by whoever runs this one process that way).
    multiprocess_dir = Path(env[MULTIPROC_ENV]) if env.get(MULTIPROC_ENV) else None
    fd = env.get(LISTEN_FD_ENV, "")
    sock = socket.socket(fileno=int(fd)) if fd.isdigit() else None
    uvloop.run(serve(settings, multiprocess_dir, sock))
    return 0


def kafka_init_command(settings: Settings) -> int:
    """Create the events and dead-letter topics; say what they are, and warn where an existing
    one is weaker than the settings. Warnings leave the exit status 0: the topics exist and
    work, and a deployment's init step (compose, k8s init container) should not block on
    what only an operator can change."""
    from collector.kafka_admin import KafkaInitError, init_topics

    try:
        topics = asyncio.run(init_topics(settings))
    except KafkaInitError as exc:
        print(f"beacon kafka init: {exc}", file=sys.stderr)
        return 1
    for topic in topics:
        print(topic.describe())
    warnings = [line for topic in topics for line in topic.warnings]
    for line in warnings:
        print(f"beacon kafka init: warning: {line}", file=sys.stderr)
    if warnings:
        print(
            f"beacon kafka init: {len(warnings)} warning{'s' if len(warnings) > 1 else ''}; "
            "existing topics are never changed here (exit status 0)",
            file=sys.stderr,
        )
    return 0


def url_command(settings: Settings, args: argparse.Namespace) -> int:
    """A pixel or click URL, signed with the configured keys or the data directory's kept
    key (the one a collector on that directory checks), as a URL or an HTML tag."""
    from collector.kept import resolve_signing_keys
    from collector.signing import load_keyring
    from collector.urls import build, render

    settings = resolve_signing_keys(settings)
    keyring = load_keyring(settings.signing_keys, settings.signing_key_file)
    try:
        result = build(args, settings.base_url, keyring)
    except ValueError as exc:
        print(f"beacon url {args.url_kind}: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(render(result, args.format))
    return 0
