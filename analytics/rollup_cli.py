"""`beacon settle`: settle or rebuild days of the rollups by hand.

The consumer that owns the store settles ended days by itself (analytics/rollup_settle.py), and
so do consumers in cluster mode, shard by shard; this is for rebuilding after a manual change
to beacon.events, for a store nobody runs, and for a cluster's shards from a job of its own:
with BEACON_CLICKHOUSE_CLUSTER it works on one replica of every shard, with `--local` on the
`<name>_local` tables of the server at BEACON_CLICKHOUSE_URL only.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys

from analytics.cluster import check_mode
from analytics.connect import open_writer
from analytics.rollup_settle import Settler, on_rollups
from analytics.settings import StoreSettings
from analytics.store import StoreError


def add_arguments(sub: argparse.ArgumentParser) -> None:
    which = sub.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true", help="rebuild every day with events")
    which.add_argument("--day", action="append", type=dt.date.fromisoformat, default=[],
                       metavar="YYYY-MM-DD", help="rebuild this day (repeatable)")  # fmt: skip
    sub.add_argument("--local", action="store_true",
                     help="one shard of a cluster: this server's <name>_local tables")  # fmt: skip


async def run(settler: Settler, args: argparse.Namespace) -> list[dt.date]:
    if args.all:
        return await settler.backfill()
    if args.day:
        await settler.rebuild(args.day)
        return list(args.day)
    return await settler.settle_due()


async def settle(settings: StoreSettings, args: argparse.Namespace) -> list[dt.date]:
    writer = open_writer(settings)
    try:
        gap_s = settings.visit_gap_s
        if args.local:
            return await run(Settler(writer, suffix="_local", visit_gap_s=gap_s), args)
        if await check_mode(writer) is None:
            return await run(Settler(writer, visit_gap_s=gap_s), args)
        return await on_rollups(writer, lambda settler: run(settler, args))  # each shard
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
