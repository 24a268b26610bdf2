"""The `beacon simulate` command: options, and the truth printed as JSON."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys

import orjson

from collector.settings import Settings
from collector.signing import load_keyring
from collector.simulate import Config, simulate
from collector.simulate.send import SendError


def add_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--host", dest="target", help="collector URL (default: BEACON_PUBLIC_URL, "
                     "else http://BEACON_HOST:BEACON_PORT)")  # fmt: skip
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        sub.add_argument(flag, type=type(f.default), default=f.default,
                         help=f"default {f.default}")  # fmt: skip
    sub.add_argument("--unsigned", action="store_true", help="send no signed URLs")
    sub.add_argument("--width", type=int, default=16, help="requests in flight (16)")


def simulate_command(settings: Settings, args: argparse.Namespace) -> int:
    config = Config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Config)})
    keyring = load_keyring("", None) if args.unsigned else load_keyring(
        settings.signing_keys, settings.signing_key_file
    )  # fmt: skip
    base = args.target or settings.base_url
    try:
        truth = asyncio.run(simulate(base, config, keyring, args.width))
    except (SendError, ValueError, OSError) as exc:
        print(f"beacon simulate: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(orjson.dumps(truth, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0
