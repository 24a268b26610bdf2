"""What `beacon run` prints as it starts: where everything is, which key signs links, and the
command as it can be run again from here."""

from __future__ import annotations

import os
import shlex
import shutil
import sys

from collector.settings import Settings
from consumers.settings import ConsumerSettings

NO_KEY = "click links are refused; with Kafka every collector needs BEACON_SIGNING_KEYS set alike"


def command_path(argv0: str) -> str:
    """How to call this command again from here: `beacon` when it is on the PATH, else its
    path (relative to the working directory when under it), or `python -m beacon`."""

    def shown(path: str) -> str:
        relative = os.path.relpath(path)
        return relative if not relative.startswith("..") else os.path.abspath(path)

    if os.path.basename(argv0) == "__main__.py":
        return f"{shlex.quote(shown(sys.executable))} -m beacon"
    found = shutil.which("beacon")
    if found and os.path.realpath(found) == os.path.realpath(argv0):
        return "beacon"
    return shlex.quote(shown(argv0))


def signing_line(settings: Settings) -> str:
    """Which key signs and checks links, and where it comes from."""
    from collector.kept import SIGNING_KEY_FILE
    from collector.signing import load_keyring

    keyring = load_keyring(settings.signing_keys, settings.signing_key_file)
    if not keyring:
        return f"no key: {NO_KEY}"
    kid = keyring.signing_kid
    path = settings.signing_key_file
    if path is not None and path == settings.data_dir / SIGNING_KEY_FILE:
        return f"key {kid}, kept in {path}: `beacon url` on this data directory signs with it"
    source = f"BEACON_SIGNING_KEY_FILE {path}" if path else "BEACON_SIGNING_KEYS"
    return f"key {kid}, from {source}"


def banner(settings: Settings, consumer: ConsumerSettings, beacon: str = "beacon") -> str:
    base = f"http://{settings.host}:{settings.port}"
    store = f"http://{consumer.store_host}:{consumer.store_port}"
    dashboard = (
        f"dashboard {store}/dashboard"
        if consumer.dashboard_token
        else "dashboard set BEACON_DASHBOARD_TOKEN for one at /dashboard on the store port"
    )
    return f"""Beacon is running: collector, consumer, embedded ClickHouse in {settings.data_dir}/
  pixel    {base}/p.gif?e=open&s=demo&c=welcome&r=alice
  events   curl -H 'Content-Type: application/json' -d '{{"e":"click","s":"demo"}}' {base}/e
  report   {beacon} report --data-dir {settings.data_dir}
  links    {beacon} url click --data-dir {settings.data_dir} --dest https://example.com/
  signing  {signing_line(settings)}
  query    curl -H 'Content-Type: application/json' {store}/query \\
             -d '{{"sql": "SELECT event_type, count() FROM beacon.events GROUP BY 1"}}'
  metrics  {base}/metrics  {store}/metrics
  {dashboard}
Stop with Ctrl-C."""
