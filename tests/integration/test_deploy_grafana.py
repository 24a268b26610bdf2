"""Grafana's ClickHouse panels (deploy/grafana/dashboards/) and the read-only user they query
with (deploy/clickhouse/users.sql, users.d/beacon-reader.xml), on the embedded ClickHouse engine.

The panels read the rollups' settled sums, never `beacon.events` or FINAL: each one is run in
chDB against Beacon's schema holding a few days of events (one day replayed twice, today left
unsettled), as the read-only profile, and its figures are compared with `events FINAL`. chDB
holds one engine per process, so the store is written in one process and read in another.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import yaml

from analytics.rollups import ROLLUPS
from tests.support.dashboards import DASHBOARDS, panels

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
USERS_SQL = DEPLOY / "clickhouse" / "users.sql"
READER_XML = DEPLOY / "clickhouse" / "users.d" / "beacon-reader.xml"
READER_CONFIG_XML = DEPLOY / "clickhouse" / "config.d" / "beacon-reader.xml"
CLICKHOUSE = "grafana-clickhouse-datasource"
ROLLUP_TABLES = {r.table for r in ROLLUPS}

# Writes the store: the consumer's migrations, the events, the closed days settled as the
# consumers (one server) or the beacon-settle CronJob (a cluster) settle them; prints the truth
# from `events FINAL` for the settled days.
WRITE = """
import asyncio, datetime as dt, json, sys
import chdb
from analytics.ddl import ConnWriter
from analytics.migrations import migrate
from analytics.rollup_settle import Settler

job = json.load(sys.stdin)
conn = chdb.connect(job["store"])
writer = ConnWriter(conn)
asyncio.run(migrate(writer, 0))
for rows in job["inserts"]:  # one insert each: the replayed copy comes in a block of its own
    lines = "\\n".join(map(json.dumps, rows))
    writer.run("INSERT INTO beacon.events FORMAT JSONEachRow\\n" + lines)
asyncio.run(Settler(writer).rebuild([dt.date.fromisoformat(d) for d in job["settle"]]))
days = ", ".join(f"toDate('{d}')" for d in job["settle"])
truth = writer.run(
    "SELECT event_type, count() AS events, countIf(is_bot = 1) AS bots, "
    "uniqExactIf(recipient, event_type = 'open') AS unique_opens, "
    "uniqExactIf(toString(visitor_id), event_type = 'pageview') AS visitors "
    f"FROM beacon.events FINAL WHERE toDate(received_at) IN ({days}) GROUP BY event_type",
    "JSONEachRow",
)
print(json.dumps([json.loads(line) for line in truth.splitlines()]))
conn.close()
"""

# Reads the store as `default` with the reader's profile: each panel's SQL, then a write and a
# setting change, which readonly = 1 must refuse.
READ = """
import json, sys
import chdb

store, config = sys.argv[1:3]
conn = chdb.connect(f"{store}?config-file={config}")
out = {"readonly": conn.query("SELECT getSetting('readonly')", "TSV").data().strip(),
       "rows": {}, "errors": {}, "refused": {}}
for name, sql in json.load(sys.stdin).items():
    try:
        out["rows"][name] = json.loads(conn.query(sql, "JSON").data())["data"]
    except Exception as exc:
        out["errors"][name] = str(exc)[:500]
for name, sql in {"insert": "INSERT INTO beacon.events (event_type) VALUES ('open')",
                  "drop": "DROP TABLE beacon.rollup_events_hourly",
                  "set": "SET max_threads = 64"}.items():
    try:
        conn.query(sql)
    except Exception as exc:
        out["refused"][name] = str(exc)[:300]
print(json.dumps(out))
conn.close()
"""


def clickhouse_targets() -> list[tuple[str, dict[str, Any], str]]:
    """(dashboard stem, panel, raw SQL) of every ClickHouse query of the dashboards."""
    found = []
    for path in DASHBOARDS:
        for panel in panels(json.loads(path.read_text())):
            for target in panel.get("targets", []):
                if target["datasource"]["type"] == CLICKHOUSE:
                    found.append((path.stem, panel, target["rawSql"]))
    return found


def expand(sql: str, start: dt.datetime, end: dt.datetime, interval_s: int = 3600) -> str:
    """The grafana-clickhouse-datasource macros, as the plugin expands them for a range."""
    lo, hi = int(start.timestamp()), int(end.timestamp())
    between = rf"\1 >= toDateTime({lo}) AND \1 <= toDateTime({hi})"
    sql = re.sub(r"\$__timeFilter\((\w+)\)", between, sql)
    bucket = rf"toStartOfInterval(toDateTime(\1), INTERVAL {interval_s} second)"
    sql = re.sub(r"\$__timeInterval\((\w+)\)", bucket, sql)
    assert "$" not in sql, f"unknown macro in {sql}"
    return sql


def test_panels_read_the_rollups_never_raw_events() -> None:
    targets = clickhouse_targets()
    assert len(targets) >= 5
    for stem, panel, sql in targets:
        where = f"{stem}: {panel['title']}"
        # `events FINAL` over a range merges every event in it, on every refresh of every panel.
        assert not re.search(r"\bbeacon\.events\b|\bevents_local\b", sql), where
        assert not re.search(r"\bFINAL\b", sql, re.IGNORECASE), where
        tables = set(re.findall(r"\bFROM\s+([\w.]+)", sql, re.IGNORECASE))
        assert tables and tables <= ROLLUP_TABLES, (where, tables)
        # Settled sums only: uniqExact sets of event ids (events_live) cost O(events) to merge.
        assert "events_live" not in sql and "settled = 1" in sql, where
        assert "$__timeFilter(period)" in sql, where
    board = json.loads((DEPLOY / "grafana" / "dashboards" / "traffic.json").read_text())
    assert board["refresh"] not in ("5s", "10s", "30s", "1m"), "settled days change once a day"


def reader_config(tmp_path: Path) -> Path:
    """A chDB config whose one user (`default`, as chDB always runs) has the reader's profile.

    The profile is taken from the shipped XML as it is, less its one constraint:
    clickhouse-local (chDB) does not read access_control_improvements, so it cannot load a
    CHANGEABLE_IN_READONLY constraint (a server reads config.d/beacon-reader.xml)."""
    shipped = ET.parse(READER_XML).getroot()
    profiles = shipped.find("profiles")
    assert profiles is not None
    reader = profiles.find("beacon_reader")
    assert reader is not None
    constraints = reader.find("constraints")
    assert constraints is not None
    reader.remove(constraints)
    ET.SubElement(profiles, "default")
    root = ET.Element("clickhouse")
    root.append(profiles)
    user = ET.SubElement(ET.SubElement(root, "users"), "default")
    for tag, text in (("password", ""), ("profile", "beacon_reader"), ("quota", "default")):
        ET.SubElement(user, tag).text = text
    ET.SubElement(ET.SubElement(user, "networks"), "ip").text = "::/0"
    ET.SubElement(ET.SubElement(root, "quotas"), "default")
    (tmp_path / "users.xml").write_bytes(ET.tostring(root))
    config = tmp_path / "config.xml"
    config.write_text(
        '<clickhouse><user_directories replace="replace"><users_xml>'
        f"<path>{tmp_path / 'users.xml'}</path></users_xml></user_directories></clickhouse>"
    )
    return config


def day_start(now: dt.datetime, days_ago: int) -> dt.datetime:
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return today - dt.timedelta(days=days_ago)


def traffic(now: dt.datetime, days_ago: int) -> list[dict[str, Any]]:
    """A few hours of a day: email opens and clicks, ad impressions, page views, a bot."""
    t0 = day_start(now, days_ago) + dt.timedelta(hours=2)
    rows = []

    def event(n: int, event_type: str, **fields: Any) -> None:
        at = t0 + dt.timedelta(minutes=7 * (n % 100), seconds=n // 100)  # all in the day
        rows.append({
            "schema_version": 3, "event_id": f"00000000-0000-4000-8000-{days_ago:04d}{n:08d}",
            "received_at": round(at.timestamp(), 3), "event_type": event_type,
            # Long ago for the settle's cut (rows inserted after it stay live).
            "inserted_at": int(at.timestamp()) + 60, **fields,
        })  # fmt: skip

    for n in range(24):
        mail = {"site": "shop", "campaign": f"spring-{n % 2}", "message": "m1"}
        event(n, "open", recipient=f"r{n % 9}", machine_open=int(n % 6 == 0), **mail)
        if n % 3 == 0:
            event(100 + n, "click", recipient=f"r{n % 9}", **mail)
        event(200 + n, "impression", site="news", campaign="fall", ad=f"banner-{n % 2}")
        event(300 + n, "pageview", site="blog", visitor_id=1 + n % 5, url_host="blog.example",
              url_path=f"/p{n % 4}", referrer=f"https://ref{n % 3}.example/x",
              is_bot=int(n % 8 == 0))  # fmt: skip
    return rows


def run_python(code: str, *args: str, stdin: Any) -> Any:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], input=json.dumps(stdin), capture_output=True,
        text=True, timeout=180, cwd=ROOT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_panels_run_as_the_reader_and_show_the_settled_days(
    tmp_path: Path, now: dt.datetime
) -> None:
    store = tmp_path / "store"
    closed = [traffic(now, 3), traffic(now, 2)]
    replayed = closed[1][:10]  # a replay: the same events again, in an insert of their own
    today = traffic(now, 0)
    settle = [day_start(now, 3).date().isoformat(), day_start(now, 2).date().isoformat()]
    truth = run_python(WRITE, stdin={"store": str(store), "inserts": [*closed, replayed, today],
                                     "settle": settle})  # fmt: skip
    truth = {row["event_type"]: row for row in truth}
    assert sum(int(r["events"]) for r in truth.values()) == len(closed[0]) + len(closed[1])

    start, end = day_start(now, 7), now + dt.timedelta(days=1)
    sqls = {f"{stem}/{panel['id']}": expand(sql, start, end) for stem, panel, sql in
            clickhouse_targets()}  # fmt: skip
    got = run_python(READ, str(store), str(reader_config(tmp_path)), stdin=sqls)
    assert got["readonly"] == "1"
    assert got["errors"] == {}
    # readonly = 1 refuses writes and settings (hence the CHANGEABLE_IN_READONLY constraint on
    # max_execution_time, which the datasource sets on every query).
    assert set(got["refused"]) == {"insert", "drop", "set"}
    assert all("READONLY" in message for message in got["refused"].values())

    rows = got["rows"]
    hourly = rows["traffic/3"]
    assert hourly and {r["time"][:10] for r in hourly} == set(settle)  # not today: not settled
    by_type: dict[str, int] = {}
    for r in hourly:
        by_type[r["event_type"]] = by_type.get(r["event_type"], 0) + int(r["events"])
    assert by_type == {t: int(r["events"]) for t, r in truth.items()}  # the replay counted once
    table = {r["event_type"]: r for r in rows["traffic/4"]}
    assert {t: int(r["events"]) for t, r in table.items()} == by_type
    bots = 100 * int(truth["pageview"]["bots"]) / int(truth["pageview"]["events"])
    assert table["pageview"]["bot_pct"] == round(bots, 1)
    campaigns = rows["traffic/5"]
    assert {(r["site"], r["campaign"]) for r in campaigns} == {
        ("shop", "spring-0"),
        ("shop", "spring-1"),
        ("news", "fall"),
    }
    assert sum(int(r["opens"]) for r in campaigns) == int(truth["open"]["events"])
    assert sum(int(r["clicks"]) for r in campaigns) == int(truth["click"]["events"])
    blog = next(r for r in rows["traffic/6"] if r["site"] == "blog")
    assert int(blog["pageviews"]) == int(truth["pageview"]["events"])
    assert int(blog["visitors"]) == int(truth["pageview"]["visitors"])
    pages = rows["traffic/7"]
    assert sum(int(r["pageviews"]) for r in pages) == int(truth["pageview"]["events"])
    referrers = rows["traffic/8"]
    assert {r["referrer_host"] for r in referrers} == {f"ref{i}.example" for i in range(3)}
    assert sum(int(r["pageviews"]) for r in referrers) == int(truth["pageview"]["events"])


def sql_statements(text: str) -> list[str]:
    body = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("--"))
    return [s.strip() for s in re.split(r";\s*$", body, flags=re.MULTILINE) if s.strip()]


PARSE = """
import json, sys
from chdb import session

s = session.Session()
out = {}
for sql in json.load(sys.stdin):
    try:
        s.query("EXPLAIN AST " + sql, "TSV", params={"reader_password": "a-test-password"})
        out[sql] = "ok"
    except Exception as exc:
        out[sql] = str(exc)[:300]
print(json.dumps(out))
s.close()
"""


def test_the_reader_user_is_the_same_in_sql_and_in_xml() -> None:
    statements = sql_statements(USERS_SQL.read_text())
    assert len(statements) == 3
    broken = statements[0].replace("CHANGEABLE_IN_READONLY", "CHANGEABLE_IN_READ_ONLY")
    parsed = run_python(PARSE, stdin=[*statements, broken])
    assert [parsed[s] for s in statements] == ["ok"] * 3  # ClickHouse's own parser
    assert parsed[broken] != "ok"
    profile, user, grant = statements
    # The password is a query parameter, never a literal in the file.
    assert "{reader_password:String}" in user and "'" not in user
    assert grant == "GRANT SELECT ON beacon.* TO beacon_reader"
    sql_settings = dict(re.findall(r"(\w+) = (\d+)", profile))

    root = ET.parse(READER_XML).getroot()
    xml_profile = root.find("profiles/beacon_reader")
    xml_user = root.find("users/beacon_reader")
    assert xml_profile is not None and xml_user is not None
    xml_settings = {c.tag: c.text for c in xml_profile if c.tag != "constraints"}
    assert sql_settings == xml_settings and sql_settings["readonly"] == "1"
    constraint = xml_profile.find("constraints/max_execution_time")
    assert constraint is not None and constraint.find("changeable_in_readonly") is not None
    assert re.search(
        rf"max_execution_time = \d+ MAX {constraint.findtext('max')} CHANGEABLE_IN_READONLY",
        profile,
    )
    assert xml_user.findtext("profile") == "beacon_reader"
    assert [q.text for q in xml_user.iterfind("grants/query")] == ["GRANT SELECT ON beacon.*"]
    # Without this server setting a CHANGEABLE_IN_READONLY constraint is refused at load.
    improvements = ET.parse(READER_CONFIG_XML).getroot()
    assert (
        improvements.findtext("access_control_improvements/settings_constraints_replace_previous")
        == "true"
    )

    # Compose: ClickHouse has the user and its password; Grafana queries as that user.
    services = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    password_var = xml_user.find("password").get("from_env")  # type: ignore[union-attr]
    assert password_var == "BEACON_GRAFANA_CLICKHOUSE_PASSWORD"
    clickhouse, grafana = services["clickhouse"], services["grafana"]
    assert password_var in clickhouse["environment"]
    assert (
        "./clickhouse/users.d/beacon-reader.xml:/etc/clickhouse-server/users.d/beacon-reader.xml:ro"
        in clickhouse["volumes"]
    )
    assert (
        "./clickhouse/config.d/beacon-reader.xml:/etc/clickhouse-server/config.d/beacon-reader.xml:ro"
        in clickhouse["volumes"]
    )
    assert grafana["environment"]["BEACON_GRAFANA_CLICKHOUSE_USER"] == "beacon_reader"
    assert clickhouse["environment"][password_var] == grafana["environment"][password_var]
    assert not any(k.startswith("BEACON_CLICKHOUSE") for k in grafana["environment"])
    sources = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "beacon.yml").read_text()
    )["datasources"]
    (ch,) = [d for d in sources if d["type"] == CLICKHOUSE]
    assert ch["jsonData"]["username"] == "${BEACON_GRAFANA_CLICKHOUSE_USER}"
    assert ch["secureJsonData"]["password"] == "${BEACON_GRAFANA_CLICKHOUSE_PASSWORD}"
