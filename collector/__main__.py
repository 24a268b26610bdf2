"""The `beacon` command: serve, consume, run, migrate, report, kafka init.

The one place that reads os.environ: flags become BEACON_* overrides, and each process builds
its frozen settings from the result.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Mapping, Sequence

import orjson

from collector.config import SettingsError
from collector.settings import Settings
from consumers.settings import ConsumerSettings

# Flags shared by the subcommands, and the variable each one overrides.
FLAGS = {
    "data_dir": ("--data-dir", "BEACON_DATA_DIR", "directory for spool, store and secret"),
    "host": ("--host", "BEACON_HOST", "collector listen address"),
    "port": ("--port", "BEACON_PORT", "collector port"),
    "sink": ("--sink", "BEACON_SINK", "auto, kafka, spool or memory"),
    "store_port": ("--store-port", "BEACON_STORE_PORT", "the store's local query port"),
    "kafka_bootstrap": ("--kafka-bootstrap", "BEACON_KAFKA_BOOTSTRAP", "Kafka host:port,..."),
}
SUBCOMMAND_FLAGS = {
    "serve": ("data_dir", "host", "port", "sink"),
    "consume": ("data_dir", "store_port"),
    "run": ("data_dir", "host", "port", "store_port"),
    "migrate": ("data_dir",),
    "report": ("data_dir", "store_port"),
    "kafka": ("kafka_bootstrap",),
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="beacon", description="Beacon tracking-pixel collector")
    subs = top.add_subparsers(dest="command", required=True)
    helps = {
        "serve": "run the collector (pixel, events, health, metrics)",
        "consume": "move spooled events into the embedded ClickHouse store",
        "run": "collector + consumer + embedded ClickHouse, supervised (the default setup)",
        "migrate": "create or update the ClickHouse schema",
        "report": "counts by day, campaign and event type",
        "kafka": "Kafka administration (kafka init: create the topics)",
    }
    for name, flag_names in SUBCOMMAND_FLAGS.items():
        sub = subs.add_parser(name, help=helps[name], description=helps[name])
        if name == "kafka":  # `beacon kafka init [flags]`: the flags belong to the action
            actions = sub.add_subparsers(dest="kafka_command", required=True)
            text = "create the event and dead-letter topics (existing ones are left as they are)"
            sub = actions.add_parser("init", help=text, description=text)
        for key in flag_names:
            flag, var, text = FLAGS[key]
            sub.add_argument(flag, dest=key, help=f"{text} (env {var})")
        sub.add_argument(
            "--set", action="append", default=[], metavar="NAME=VALUE",
            help="any setting, by its variable name without BEACON_ (e.g. --set ip_mode=drop)",
        )  # fmt: skip
        if name == "report":
            sub.add_argument("--days", type=int, default=7, help="how far back (default 7)")
            sub.add_argument("--site", help="only this site")
            sub.add_argument("--campaign", help="only this campaign")
            sub.add_argument("--format", choices=("table", "json"), default="table")
    return top


def overrides(args: argparse.Namespace) -> dict[str, str]:
    """BEACON_* values from the command line."""
    out: dict[str, str] = {}
    for key, (_, var, _) in FLAGS.items():
        value = getattr(args, key, None)
        if value is not None:
            out[var] = str(value)
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            raise SettingsError(f"--set {item!r}: expected NAME=VALUE")
        out["BEACON_" + name.strip().upper()] = value
    return out


def banner(settings: Settings, consumer: ConsumerSettings) -> str:
    base = f"http://{settings.host}:{settings.port}"
    store = f"http://{consumer.store_host}:{consumer.store_port}"
    return f"""Beacon is running: collector, consumer, embedded ClickHouse in {settings.data_dir}/
  pixel    {base}/p.gif?e=open&s=demo&c=welcome&r=alice
  events   curl -H 'Content-Type: application/json' -d '{{"e":"click","s":"demo"}}' {base}/e
  report   beacon report --data-dir {settings.data_dir}
  query    curl --data 'SELECT event_type, count() FROM beacon.events GROUP BY 1' {store}/query
  metrics  {base}/metrics  {store}/metrics
Stop with Ctrl-C."""


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = parser().parse_args(argv)
    env = dict(os.environ if environ is None else environ)
    logging.basicConfig(
        level=env.get("BEACON_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        env.update(overrides(args))
        settings = Settings.from_env(env)
        consumer = ConsumerSettings.from_env(env)
    except SettingsError as exc:
        print(f"beacon: {exc}", file=sys.stderr)
        return 2
    return COMMANDS[args.command](args, env, settings, consumer)


def cmd_serve(args, env, settings: Settings, consumer: ConsumerSettings) -> int:  # type: ignore[no-untyped-def]
    import uvloop

    from collector.server import serve

    uvloop.run(serve(settings))
    return 0


def cmd_consume(args, env, settings: Settings, consumer: ConsumerSettings) -> int:  # type: ignore[no-untyped-def]
    import uvloop

    from consumers.service import consume

    uvloop.run(consume(consumer))
    return 0


def cmd_run(args, env, settings: Settings, consumer: ConsumerSettings) -> int:  # type: ignore[no-untyped-def]
    from collector.supervisor import supervise

    return supervise(env, banner(settings, consumer))


def cmd_migrate(args, env, settings: Settings, consumer: ConsumerSettings) -> int:  # type: ignore[no-untyped-def]
    from consumers.schema import migrate
    from consumers.writers.chdb import ChdbWriter

    async def go() -> list[int]:
        writer = ChdbWriter(consumer.store_dir)
        try:
            return await migrate(writer, consumer.retention_days)
        finally:
            await writer.close()

    applied = asyncio.run(go())
    print(f"applied migrations: {applied}" if applied else "schema is up to date")
    return 0


def cmd_report(args, env, settings: Settings, consumer: ConsumerSettings) -> int:  # type: ignore[no-untyped-def]
    from consumers.report import StoreUnavailable, fetch_report, format_table
    from consumers.writers import StoreError

    try:
        rows = fetch_report(consumer, args.days, args.site, args.campaign)
    except (StoreUnavailable, StoreError) as exc:
        print(f"beacon report: {exc}", file=sys.stderr)
        return 1
    if args.format == "json":
        sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(format_table(rows))
    return 0


def cmd_kafka(args, env, settings: Settings, consumer: ConsumerSettings) -> int:  # type: ignore[no-untyped-def]
    from collector.kafka_admin import KafkaInitError, init_topics

    # The only action so far is `init` (argparse requires one).
    try:
        topics = asyncio.run(init_topics(settings))
    except KafkaInitError as exc:
        print(f"beacon kafka init: {exc}", file=sys.stderr)
        return 1
    for topic in topics:
        print(topic.describe())
    return 0


COMMANDS = {
    "serve": cmd_serve,
    "consume": cmd_consume,
    "run": cmd_run,
    "migrate": cmd_migrate,
    "report": cmd_report,
    "kafka": cmd_kafka,
}


if __name__ == "__main__":
    sys.exit(main())
