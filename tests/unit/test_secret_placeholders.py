"""Placeholder secrets are refused at start (contract/config.py `is_placeholder`): a value
copied from an example is public however long it is, so an unedited deploy must fail loudly.
The rule: lower-cased, with all but a-z and 0-9 dropped, the value contains changeme, replace,
placeholder or example; or it is one character repeated."""

from __future__ import annotations

import secrets

import pytest

from collector.settings import Settings
from consumers.settings import ConsumerSettings
from contract.config import SettingsError, is_placeholder

PLACEHOLDERS = [
    "change-me-to-64-random-hex-characters",  # what deploy/k8s/base/secret.yaml used to ship
    "change-me-to-a-long-random-token",  # the README tour's old dashboard token
    "CHANGE_ME_CHANGE_ME_CHANGE_ME",
    "changeme-changeme-123",
    "REPLACE-ME-with-the-output-of-openssl-rand-hex-32",  # deploy/k8s/overlays/example
    "<replace with a long random string>",
    "placeholder-secret-value-0123",
    "an-example-secret-of-some-length",
    "x" * 64,
    "0" * 32,
]
REAL = [
    secrets.token_hex(32),
    secrets.token_urlsafe(32),
    "visitor-secret-0123456789abcdef",
    "laptop-only-visitor-id-secret",  # the compose default (a laptop's, not a placeholder)
    "laptop-only-dashboard-token",  # the compose dashboard's default, likewise
    "correct horse battery staple",
]


@pytest.mark.parametrize("value", PLACEHOLDERS)
def test_placeholders_are_refused_naming_the_variable_never_the_value(value: str) -> None:
    assert is_placeholder(value)
    with pytest.raises(SettingsError, match=r"^BEACON_SECRET: a placeholder value") as refused:
        Settings.from_env({"BEACON_SECRET": value})
    assert value not in str(refused.value)
    with pytest.raises(SettingsError, match=r"^BEACON_DASHBOARD_TOKEN: a placeholder value"):
        ConsumerSettings.from_env({"BEACON_DASHBOARD_TOKEN": value})


@pytest.mark.parametrize("value", REAL)
def test_real_secrets_pass(value: str) -> None:
    assert not is_placeholder(value)
    assert Settings.from_env({"BEACON_SECRET": value}).secret == value
    assert ConsumerSettings.from_env({"BEACON_DASHBOARD_TOKEN": value}).dashboard_token == value


def test_random_hex_never_reads_as_a_placeholder() -> None:
    # g, h, l, m, n, p, r are no hex digits: no word of the rule fits in hex.
    assert not any(is_placeholder(secrets.token_hex(32)) for _ in range(2000))
    assert Settings.from_env({"BEACON_SECRET": ""}).secret == ""  # unset: a random one is made


@pytest.mark.parametrize("value", PLACEHOLDERS[:3])
def test_a_placeholder_signing_key_or_clickhouse_password_is_refused(value: str) -> None:
    with pytest.raises(SettingsError, match=r"^BEACON_SIGNING_KEYS: the secret of key 'k1' is a"):
        Settings.from_env({"BEACON_SIGNING_KEYS": f"k1:{value}"})
    with pytest.raises(SettingsError, match=r"^BEACON_CLICKHOUSE_PASSWORD: a placeholder value"):
        ConsumerSettings.from_env({"BEACON_CLICKHOUSE_PASSWORD": value})
    real = secrets.token_hex(16)
    assert Settings.from_env({"BEACON_SIGNING_KEYS": f"k1:{real}"}).signing_keys == f"k1:{real}"
    assert ConsumerSettings.from_env({"BEACON_CLICKHOUSE_PASSWORD": "s3"}).clickhouse_password
