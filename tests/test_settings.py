"""Settings from the environment and the command line; errors name the variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from collector.__main__ import overrides, parser
from collector.config import SettingsError
from collector.settings import Settings
from consumers.settings import ConsumerSettings


def test_defaults_and_env() -> None:
    s = Settings.from_env({})
    assert (s.port, s.ip_mode, s.dnt_policy, s.sink) == (8080, "truncate", "passive", "auto")
    s = Settings.from_env(
        {"BEACON_PORT": "9000", "BEACON_IP_MODE": "drop", "BEACON_URL_QUERY_KEEP": "ref, lang"}
    )
    assert (s.port, s.ip_mode, s.url_query_keep) == (9000, "drop", ("ref", "lang"))
    c = ConsumerSettings.from_env({"BEACON_DATA_DIR": "/x", "BEACON_BATCH_MAX_ROWS": "50"})
    assert c.store_dir == Path("/x/clickhouse") and c.batch_max_rows == 50


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"BEACON_PORT": "eighty"}, "BEACON_PORT: expected an integer"),
        ({"BEACON_IP_MODE": "half"}, "BEACON_IP_MODE: expected one of truncate, full, drop"),
        ({"BEACON_LINGER_MS": "0"}, "BEACON_LINGER_MS: must be >= 1"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], needle: str) -> None:
    with pytest.raises(SettingsError, match=needle):
        Settings.from_env(env)


def test_flags_override_env() -> None:
    args = parser().parse_args(["serve", "--port", "9100", "--set", "ip_mode=full"])
    env = {"BEACON_PORT": "9000", **overrides(args)}
    s = Settings.from_env(env)
    assert (s.port, s.ip_mode) == (9100, "full")


def test_bad_setting_fails_at_start(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "collector", "serve", "--data-dir", str(tmp_path)],
        env={"BEACON_SPOOL_MAX_BYTES": "lots", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "BEACON_SPOOL_MAX_BYTES: expected an integer" in proc.stderr
