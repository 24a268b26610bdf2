"""The `beacon` command: serve, consume, run, migrate, report, kafka init, simulate, dashboard.
It parses the command line and dispatches to each part's commands.

The one place that reads os.environ: flags become BEACON_* overrides, and each process builds
its frozen settings from the result.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import logging
import os
import re
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata

from beacon.banner import banner, command_path
from beacon.claims import IN_USE_ADVICE, IN_USE_DEFAULT, claim_data_dir
from collector.settings import Settings
from consumers.settings import ConsumerSettings
from contract import owner
from contract.config import SettingsError
from contract.logs import ThrottledLibraries

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
    "url": ("data_dir",),
    "erase": ("data_dir", "store_port"),
    "export": ("data_dir", "store_port"),
    "simulate": (),
    "dashboard": ("data_dir", "store_port"),
    "settle": ("data_dir",),
}
SET_HELP = "any setting, by its variable name without BEACON_ (e.g. --set ip_mode=drop)"
# Read by this module itself, not by a settings class.
OWN_SETTINGS = ("log_level",)
SETTING_NAMES = frozenset(
    [f.name for cls in (Settings, ConsumerSettings) for f in dataclasses.fields(cls)]
    + list(OWN_SETTINGS)
)


def version() -> str:
    try:
        return metadata.version("beacon")
    except metadata.PackageNotFoundError:  # run from a tree that was never installed
        return "unknown"


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="beacon", description="Beacon tracking-pixel collector")
    top.add_argument("--version", action="version", version=f"beacon {version()}")
    subs = top.add_subparsers(dest="command", required=True)
    helps = {
        "serve": "run the collector (pixel, events, health, metrics)",
        "consume": "move spooled events into the embedded ClickHouse store",
        "run": "collector + consumer + embedded ClickHouse, supervised (the default setup)",
        "migrate": "create or update the ClickHouse schema",
        "report": "counts by day, campaign and event type; --view: campaigns, ads, sites, pages",
        "kafka": "Kafka administration (kafka init: create the topics)",
        "url": "signed tracking URLs and HTML snippets (open, click, impression, conversion)",
        "erase": "delete one person's (or one site's) events, with an audit line",
        "export": "one person's events as JSON, with an audit line",
        "simulate": "send a known, seeded mix of traffic to a collector; print the truth",
        "dashboard": "the read-only dashboard page, served from a ClickHouse server",
        "settle": "settle or rebuild days of the rollups (the consumer does it by itself)",
    }
    for name, flag_names in SUBCOMMAND_FLAGS.items():
        sub = subs.add_parser(name, help=helps[name], description=helps[name])
        # A bad flag is reported with the usage of the (sub)command it was given to.
        sub.set_defaults(usage_parser=sub)
        if name == "url":  # `beacon url KIND [options]`: one parser per kind of link
            from collector.urls import add_url_kinds

            for kind in add_url_kinds(sub):
                kind.set_defaults(usage_parser=kind)
                flag, var, text = FLAGS["data_dir"]
                kind.add_argument(flag, dest="data_dir", help=f"{text}: its kept signing key "
                                  f"(env {var})")  # fmt: skip
                kind.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                                  help=SET_HELP)  # fmt: skip
            continue
        if name == "kafka":  # `beacon kafka init [flags]`: the flags belong to the action
            actions = sub.add_subparsers(dest="kafka_command", required=True)
            text = "create the event and dead-letter topics (existing ones are left as they are)"
            sub = actions.add_parser("init", help=text, description=text)
            sub.set_defaults(usage_parser=sub)
        for key in flag_names:
            flag, var, text = FLAGS[key]
            sub.add_argument(flag, dest=key, help=f"{text} (env {var})")
        sub.add_argument(
            "--set", action="append", default=[], metavar="NAME=VALUE",
            help=SET_HELP,
        )  # fmt: skip
        if name in ("serve", "run"):
            sub.add_argument(
                "--workers", type=worker_count, metavar="N",
                help="collector processes on the port (SO_REUSEPORT); default: one per CPU",
            )  # fmt: skip
        if name == "report":  # views, windows, formats: analytics/report_cli.py
            from analytics.report_cli import add_arguments as add_report_arguments

            add_report_arguments(sub)
        if name == "simulate":  # collector/simulate/
            from collector.simulate.cli import add_arguments as add_simulate_arguments

            add_simulate_arguments(sub)
        if name == "dashboard":  # analytics/dashboard/
            from analytics.dashboard.service import add_arguments as add_dashboard_arguments

            add_dashboard_arguments(sub)
        if name == "settle":  # analytics/rollup_cli.py
            from analytics.rollup_cli import add_arguments as add_settle_arguments

            add_settle_arguments(sub)
        if name in ("erase", "export"):  # data subject requests (analytics/subject_cli.py)
            from analytics.subject_cli import add_arguments

            add_arguments(sub, name)
    return top


def worker_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return count


def overrides(args: argparse.Namespace) -> dict[str, tuple[str, str]]:
    """BEACON_* values from the command line: {variable: (value, the flag as typed)}."""
    out: dict[str, tuple[str, str]] = {}
    for key, (flag, var, _) in FLAGS.items():
        value = getattr(args, key, None)
        if value is not None:
            out[var] = (str(value), flag)
    for item in args.set:
        name, sep, value = item.partition("=")
        name = name.strip().lower()
        if not sep:
            raise SettingsError(f"--set {item!r}: expected NAME=VALUE")
        if name not in SETTING_NAMES:
            near = difflib.get_close_matches(name, SETTING_NAMES, n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise SettingsError(
                f"--set {name}: no such setting{hint}; the settings are: "
                + ", ".join(sorted(SETTING_NAMES))
            )
        out["BEACON_" + name.upper()] = (value, f"--set {name}")
    return out


def as_typed(message: str, typed: Mapping[str, tuple[str, str]]) -> str:
    """An error about a variable that came from a flag names the flag the user typed."""
    return re.sub(
        r"\bBEACON_[A-Z0-9_]+\b",
        lambda m: typed[m.group()][1] if m.group() in typed else m.group(),
        message,
    )


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args, unknown = parser().parse_known_args(argv)
    if unknown:  # the usage of the command they were given to, not the top-level one
        args.usage_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    env = dict(os.environ if environ is None else environ)
    logging.basicConfig(
        level=env.get("BEACON_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    for handler in logging.getLogger().handlers:  # aiokafka logs every retry of every node
        handler.addFilter(ThrottledLibraries(("aiokafka",)))
    typed: dict[str, tuple[str, str]] = {}
    try:
        typed = overrides(args)
        env.update({var: value for var, (value, _) in typed.items()})
        settings = Settings.from_env(env)
        consumer = ConsumerSettings.from_env(env)
        claims = claim_data_dir(args.command, settings, consumer, env)
        env[owner.CLAIMS_ENV] = owner.claimed_env(claims)  # children work under them
        # Also what a command finds wrong as it starts (the kept visitor-id secret).
        return COMMANDS[args.command](args, env, settings, consumer)
    except SettingsError as exc:
        print(f"beacon: {as_typed(str(exc), typed)}", file=sys.stderr)
        return 2
    except owner.InUse as exc:
        advice = IN_USE_ADVICE.get(args.command, IN_USE_DEFAULT).format(pid=exc.owner.pid)
        print(f"beacon {args.command}: {exc}; {advice}", file=sys.stderr)
        return 1


def cmd_serve(args, env, settings: Settings, consumer: ConsumerSettings) -> int:  # type: ignore[no-untyped-def]
    from collector.commands import serve_command

    return serve_command(settings, env, args.workers)


def cmd_consume(args, env, settings: Settings, consumer: ConsumerSettings) -> int:  # type: ignore[no-untyped-def]
    import uvloop
    from aiokafka.errors import KafkaError

    from analytics.store import StoreError
    from consumers.service import consume

    try:
        uvloop.run(consume(consumer))
    except StoreError as exc:  # at start: the pipeline retries its own
        print(f"beacon consume: {str(exc)[:1000]}", file=sys.stderr)
        return 1
    except KafkaError as exc:  # one no retry mends (a permission, a setting)
        print(f"beacon consume: Kafka: {str(exc)[:1000]}", file=sys.stderr)
        return 1
    return 0


def cmd_run(args, env, settings: Settings, consumer: ConsumerSettings) -> int:  # type: ignore[no-untyped-def]
    from collector.kept import resolve_kept
    from collector.supervisor import supervise

    # The consumer reads Kafka when it has a bootstrap, else the spool: a collector writing
    # elsewhere would leave every event where nothing reads it.
    if settings.sink == "memory" or settings.uses_kafka != bool(consumer.kafka_bootstrap):
        raise SettingsError(
            f"BEACON_SINK={settings.sink} with BEACON_KAFKA_BOOTSTRAP="
            f"{consumer.kafka_bootstrap or '(unset)'}: nothing would store the collector's "
            "events; beacon run takes the spool without a bootstrap, Kafka with one "
            "(BEACON_SINK=auto)"
        )
    serve_args = ["--workers", str(args.workers)] if args.workers else []
    # Made before the children start, so the banner can name the key they will use.
    text = banner(resolve_kept(settings), consumer, command_path(sys.argv[0]))
    return supervise(env, text, serve_args)


def cmd_migrate(args, env, settings: Settings, consumer: ConsumerSettings) -> int:  # type: ignore[no-untyped-def]
    from analytics.migrations import migrate_command

    return migrate_command(consumer)


def cmd_report(args, env, settings: Settings, consumer: ConsumerSettings) -> int:  # type: ignore[no-untyped-def]
    from analytics.report_cli import report_command

    return report_command(consumer, args)


def cmd_kafka(args, env, settings: Settings, consumer: ConsumerSettings) -> int:  # type: ignore[no-untyped-def]
    from collector.commands import kafka_init_command

    return kafka_init_command(settings)  # `init`, the only action so far (argparse requires one)


def cmd_url(args, env, settings: Settings, consumer: ConsumerSettings) -> int:  # type: ignore[no-untyped-def]
    from collector.commands import url_command

    return url_command(settings, args)


def cmd_erase(args, env, settings: Settings, consumer: ConsumerSettings) -> int:  # type: ignore[no-untyped-def]
    from analytics.subject_cli import erase_command

    return erase_command(consumer, args)


def cmd_export(args, env, settings: Settings, consumer: ConsumerSettings) -> int:  # type: ignore[no-untyped-def]
    from analytics.subject_cli import export_command

    return export_command(consumer, args)


def cmd_simulate(args, env, settings: Settings, consumer: ConsumerSettings) -> int:  # type: ignore[no-untyped-def]
    from collector.simulate.cli import simulate_command

    return simulate_command(settings, args)


def cmd_dashboard(args, env, settings: Settings, consumer: ConsumerSettings) -> int:  # type: ignore[no-untyped-def]
    from analytics.dashboard.service import dashboard_command

    return dashboard_command(consumer, args)


def cmd_settle(args, env, settings: Settings, consumer: ConsumerSettings) -> int:  # type: ignore[no-untyped-def]
    from analytics.rollup_cli import settle_command

    return settle_command(consumer, args)


COMMANDS = {
    "serve": cmd_serve,
    "consume": cmd_consume,
    "run": cmd_run,
    "migrate": cmd_migrate,
    "report": cmd_report,
    "kafka": cmd_kafka,
    "url": cmd_url,
    "erase": cmd_erase,
    "export": cmd_export,
    "simulate": cmd_simulate,
    "dashboard": cmd_dashboard,
    "settle": cmd_settle,
}


if __name__ == "__main__":
    sys.exit(main())
