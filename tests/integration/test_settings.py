"""Settings from the environment and the command line; errors name the variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from beacon.__main__ import overrides, parser
from collector.kept import resolve_secret, resolve_signing_keys
from collector.settings import Settings
from consumers.settings import ConsumerSettings
from contract.config import SettingsError


def test_defaults_and_env() -> None:
    s = Settings.from_env({})
    assert (s.port, s.ip_mode, s.dnt_policy, s.sink) == (8080, "truncate", "passive", "auto")
    s = Settings.from_env(
        {"BEACON_PORT": "9000", "BEACON_IP_MODE": "drop", "BEACON_URL_QUERY_KEEP": "ref, lang"}
    )
    assert (s.port, s.ip_mode, s.url_query_keep) == (9000, "drop", ("ref", "lang"))
    c = ConsumerSettings.from_env({"BEACON_DATA_DIR": "/x", "BEACON_BATCH_MAX_ROWS": "50"})
    assert c.store_dir == Path("/x/clickhouse") and c.batch_max_rows == 50
    assert c.read_limits.settings()["max_memory_usage"] == str(1 << 30)
    c = ConsumerSettings.from_env({"BEACON_STORE_QUERY_MAX_MEMORY_BYTES": "268435456"})
    assert c.read_limits.settings()["max_memory_usage"] == "268435456"
    with pytest.raises(SettingsError, match="BEACON_STORE_QUERY_MAX_MEMORY_BYTES: must be >= "):
        ConsumerSettings.from_env({"BEACON_STORE_QUERY_MAX_MEMORY_BYTES": "1000000"})


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"BEACON_PORT": "eighty"}, "BEACON_PORT: expected an integer"),
        ({"BEACON_IP_MODE": "half"}, "BEACON_IP_MODE: expected one of truncate, full, drop"),
        ({"BEACON_LINGER_MS": "0"}, "BEACON_LINGER_MS: must be >= 1"),
        ({"BEACON_SECRET": "fifteen-chars-x"}, "BEACON_SECRET: shorter than 16 chars"),
        # Room for a whole POST /e array, which is taken whole or not at all.
        ({"BEACON_BUFFER_MAX_EVENTS": "99"}, "BEACON_BUFFER_MAX_EVENTS: must be >= 100"),
        ({"BEACON_SPOOL_MAX_BYTES": "1048575"}, "BEACON_SPOOL_MAX_BYTES: must be >= 1048576"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], needle: str) -> None:
    with pytest.raises(SettingsError, match=needle):
        Settings.from_env(env)


def test_a_short_visitor_secret_is_refused_and_an_unset_one_is_made(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"BEACON_SECRET": "s3cret"})
    assert "s3cret" not in str(refused.value)  # errors may be logged: they name, never quote
    assert Settings.from_env({"BEACON_SECRET": "sixteen-chars-xx"}).secret == "sixteen-chars-xx"
    unset = Settings.from_env({"BEACON_DATA_DIR": str(tmp_path)})
    made = resolve_secret(unset)
    assert len(made.secret) == 64
    assert resolve_secret(unset).secret == made.secret  # kept in data_dir, read back


def test_flags_override_env() -> None:
    args = parser().parse_args(["serve", "--port", "9100", "--set", "ip_mode=full"])
    env = {"BEACON_PORT": "9000", **{var: value for var, (value, _) in overrides(args).items()}}
    s = Settings.from_env(env)
    assert (s.port, s.ip_mode) == (9100, "full")


def test_bad_setting_fails_at_start(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "beacon", "serve", "--data-dir", str(tmp_path)],
        env={"BEACON_SPOOL_MAX_BYTES": "lots", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "BEACON_SPOOL_MAX_BYTES: expected an integer" in proc.stderr


@pytest.mark.parametrize(
    "env",
    [
        {"BEACON_SINK": "spool", "BEACON_KAFKA_BOOTSTRAP": "127.0.0.1:9"},
        {"BEACON_SINK": "memory"},
    ],
    ids=["spool-with-kafka", "memory"],
)
def test_run_refuses_a_collector_writing_where_its_consumer_does_not_read(
    tmp_path: Path, env: dict[str, str]
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "beacon", "run", "--data-dir", str(tmp_path)],
        env={**env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "nothing would store the collector's events" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_short_dashboard_token_is_refused() -> None:
    with pytest.raises(SettingsError, match="BEACON_DASHBOARD_TOKEN: shorter than 16 chars"):
        ConsumerSettings.from_env({"BEACON_DASHBOARD_TOKEN": "guessable"})
    assert ConsumerSettings.from_env({}).dashboard_token == ""  # empty: no dashboard


def test_a_kept_secret_cut_short_stops_the_start(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("")  # a start that died between making and writing it
    proc = subprocess.run(
        [sys.executable, "-m", "beacon", "serve", "--workers", "1", "--port", "0",
         "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "visitor-id secret shorter than 16 chars" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_signing_key_is_kept_for_one_machine_but_not_with_kafka(tmp_path: Path) -> None:
    embedded = resolve_signing_keys(Settings.from_env({"BEACON_DATA_DIR": str(tmp_path)}))
    assert embedded.signing_key_file == tmp_path / "signing-keys"
    again = resolve_signing_keys(Settings.from_env({"BEACON_DATA_DIR": str(tmp_path)}))
    assert again.signing_key_file == embedded.signing_key_file
    assert (tmp_path / "signing-keys").stat().st_mode & 0o777 == 0o600
    # With Kafka, collectors are many: each keeping its own key would refuse the others' links.
    elsewhere = tmp_path / "kafka"
    kafka = Settings.from_env(
        {"BEACON_DATA_DIR": str(elsewhere), "BEACON_KAFKA_BOOTSTRAP": "127.0.0.1:9"}
    )
    assert resolve_signing_keys(kafka) == kafka and not elsewhere.exists()
    # Keys that are set are used as they are.
    mine = Settings.from_env(
        {"BEACON_DATA_DIR": str(elsewhere), "BEACON_SIGNING_KEYS": "k9:0123456789abcdef0123"}
    )
    assert resolve_signing_keys(mine) == mine


def test_a_start_that_cannot_write_the_secret_leaves_nothing_the_next_start_refuses(
    tmp_path: Path,
) -> None:
    """A first start on a full disk (here: a file size limit of 0, EFBIG) fails; once there is
    room, the next start makes the secret instead of finding an empty file it must refuse."""
    first = subprocess.run(
        [sys.executable, "-c", FULL_DISK_START, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert first.returncode != 0 and "File too large" in first.stderr, first.stderr
    assert list(tmp_path.iterdir()) == []  # not even an empty `secret`
    made = resolve_secret(Settings.from_env({"BEACON_DATA_DIR": str(tmp_path)}))
    assert len(made.secret) == 64
    assert (tmp_path / "secret").read_text() == made.secret + "\n"
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]


FULL_DISK_START = """
import resource, signal, sys
from collector.kept import resolve_secret
from collector.settings import Settings
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, as the collector sets it
resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
resolve_secret(Settings.from_env({"BEACON_DATA_DIR": sys.argv[1]}))
"""
