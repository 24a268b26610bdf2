"""`beacon settle`: settle or rebuild days of the rollups by hand.

The consumer that owns the store settles ended days by itself (analytics/rollup_settle.py);
this is for a ClickHouse server's shards in a cluster (`--local`, run against each shard),
for rebuilding after a manual change to beacon.events, and for a store nobody runs.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys

from analytics.connect import open_writer
from analytics.rollup_settle import Settler
from analytics.settings import StoreSettings
from analytics.store import StoreError


def add_arguments(sub: argparse.ArgumentParser) -> None:
    which = sub.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true", help="rebuild every day with events")
    which.add_argument("--day", action="append", type=dt.date.fromisoformat, default=[],
                       metavar="YYYY-MM-DD", help="rebuild this day (repeatable)")  # fmt: skip
    sub.add_argument("--local", action="store_true",
                     help="a shard of a cluster: settle its <name>_local tables")  # fmt: skip


async def settle(settings: StoreSettings, args: argparse.Namespace) -> list[dt.date]:
    writer = open_writer(settings)
    try:
        settler = Settler(writer, suffix="_local" if args.local else "")
        if args.all:
            return await settler.backfill()
        if args.day:
            await settler.rebuild(args.day)
            return list(args.day)
        return await settler.settle_due()
    finally:
        await writer.close()


def settle_command(settings: StoreSettings, args: argparse.Namespace) -> int:
    try:
        days = asyncio.run(settle(settings, args))
    except StoreError as exc:
        hint = "" if settings.clickhouse_url else " (a running consumer settles by itself)"
        print(f"beacon settle: {str(exc)[:500]}{hint}", file=sys.stderr)
        return 1
    print(f"rollups settled or rebuilt: {', '.join(map(str, days)) or 'nothing was due'}")
    return 0
