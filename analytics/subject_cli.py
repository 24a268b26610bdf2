"""`beacon erase` and `beacon export`: run a data subject request where the data is.

Like `beacon report` (analytics/report.py): a ClickHouse server when a URL is set; else the
process that owns the data directory's embedded store, through its loopback port (chDB lets
one process open a data directory); and with none running, the store opened here.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import urllib.error
import urllib.request

import orjson

from analytics import erasure
from analytics.report import StoreUnavailable, not_answering, owner_url, run_query
from analytics.settings import StoreSettings
from analytics.store import StoreError, Writer, json_rows
from contract import owner

# How long `beacon erase` waits for the store port's answer. The erasure goes on there to its
# audit line whatever the command does (analytics/query_server.py); past this, it says so.
ERASE_WAIT_S = 300.0
STILL_ERASING = 3  # the exit status then: not a failure, not done yet


class StillErasing(Exception):
    """The store port took the erasure and has not answered within ERASE_WAIT_S."""


def add_arguments(sub: argparse.ArgumentParser, action: str) -> None:
    """The request's subject: exactly one of the ids (`--site` for erase only)."""
    group = sub.add_mutually_exclusive_group(required=True)
    group.add_argument("--recipient", help="a recipient or user id (the pixel's `r`)")
    group.add_argument("--visitor", help="a visitor id (the cookie's value, or a report's)")
    if action == "erase":
        group.add_argument("--site", help="every event of a site")
    else:
        sub.add_argument("--output", "-o", help="write the JSON here (default: stdout)")


def subject(args: argparse.Namespace) -> tuple[str, str]:
    """(field, value) of the request; argparse made sure exactly one is set."""
    for field in erasure.FIELDS:
        value = getattr(args, field, None)
        if value is not None:
            return field, value
    raise erasure.RequestError("no_subject")


async def _erase_with(writer: Writer, field: str, value: str) -> int:
    try:
        return await erasure.erase(writer, field, value)
    finally:
        await writer.close()


def _erase_at_store_port(
    settings: StoreSettings, found: owner.Owner, field: str, value: str
) -> int:
    """Rows erased by the process owning the store (it writes the audit line)."""
    url = owner_url(settings, found)
    body = orjson.dumps({"field": field, "value": value, "by": erasure.actor()})
    request = urllib.request.Request(
        f"{url}/erase",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=ERASE_WAIT_S) as response:
            return int(orjson.loads(response.read())["rows"])
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        try:
            reason = orjson.loads(text).get("error", text)
        except orjson.JSONDecodeError:
            reason = text
        raise StoreError(f"the store refused the erasure ({exc.code}): {reason}") from None
    except TimeoutError:
        # Waiting for the answer: the request is in (a connect or a send that times out is
        # a URLError), and the erasure runs on (a rebuild of many days' rollups takes long).
        raise StillErasing(
            f"no answer from the store port in {ERASE_WAIT_S:.0f} s: the erasure most likely "
            f"goes on there, and appends its line to {settings.audit_path} when it ends (a "
            "failure is in the store's log); if no line comes, run it again: it erases what "
            "is left"
        ) from None
    except (urllib.error.URLError, ConnectionError):
        raise not_answering(settings, found, url) from None


def run_erase(settings: StoreSettings, field: str, value: str) -> tuple[int, str]:
    """(rows erased, where): through ClickHouse, the store's port, or the store directly."""
    if settings.clickhouse_url:
        from analytics.connect import open_writer

        # As the consumers' (a cluster erases on each shard; replicas record on their quorum).
        writer: Writer = open_writer(settings)
        return _erase_here(settings, writer, field, value, "clickhouse")
    found = owner.owner(settings.data_dir, owner.CONSUMER)
    if found is not None:
        return _erase_at_store_port(settings, found, field, value), "store_port"
    if not settings.store_dir.exists():
        raise StoreUnavailable(f"no store at {settings.store_dir}: nothing to erase")
    from analytics.store.chdb import ChdbWriter

    with owner.holding(settings.data_dir, owner.CONSUMER, "beacon erase"):
        return _erase_here(settings, ChdbWriter(settings.store_dir), field, value, "direct")


def _erase_here(
    settings: StoreSettings, writer: Writer, field: str, value: str, via: str
) -> tuple[int, str]:
    try:
        erasure.check_audit(settings.audit_path)  # no erasure without its record
    except OSError:
        asyncio.run(writer.close())
        raise
    rows = asyncio.run(_erase_with(writer, field, value))
    erasure.audit(settings.audit_path, "erase", field, value, rows, via, erasure.actor())
    return rows, via


def erase_command(settings: StoreSettings, args: argparse.Namespace) -> int:
    field, value = subject(args)
    try:
        erasure.condition(field, value)  # a bad id fails here, before anything is reached
        rows, via = run_erase(settings, field, value)
    except erasure.RequestError as exc:
        print(f"beacon erase: {exc.reason}", file=sys.stderr)
        return 2
    except StillErasing as exc:
        print(f"beacon erase: {exc}", file=sys.stderr)
        return STILL_ERASING
    except (StoreUnavailable, StoreError, OSError) as exc:
        print(f"beacon erase: {exc}", file=sys.stderr)
        return 1
    # Events still between the collector and the table (spool, Kafka) are left out by the
    # consumer from now on, and a batch whose insert was under way deletes them after it.
    print(f"erased {rows} rows where {field} = {value!r} (via {via}; audit: {settings.audit_path})")
    return 0


def export_command(settings: StoreSettings, args: argparse.Namespace) -> int:
    field, value = subject(args)
    try:
        sql = erasure.export_sql(field, value)
        erasure.check_audit(settings.audit_path)  # no export without its record
        text = run_query(settings, sql, "JSONEachRow", "beacon export")
    except erasure.RequestError as exc:
        print(f"beacon export: {exc.reason}", file=sys.stderr)
        return 2
    except (StoreUnavailable, StoreError, OSError) as exc:
        print(f"beacon export: {exc}", file=sys.stderr)
        return 1
    events = json_rows(text)
    doc = {
        "field": field,
        "value": value,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "events": events,
    }
    data = orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"
    if args.output:
        # 0600: one person's data, for that person.
        fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
    else:
        sys.stdout.write(data.decode())
    via = "clickhouse" if settings.clickhouse_url else "store"
    erasure.audit(settings.audit_path, "export", field, value, len(events), via, erasure.actor())
    return 0
