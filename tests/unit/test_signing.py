"""URL signing: valid, tampered, wrong key, rotated key; key settings that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.settings import Settings
from collector.signing import (
    MAC_BYTES,
    Keyring,
    canonical,
    load_keyring,
    parse_keys,
    sign,
    verify,
)
from contract.config import SettingsError

OLD = ("k2025", b"old-secret-0123456789abcdef")
NEW = ("k2026", b"new-secret-0123456789abcdef")
PARAMS = {"e": "open", "s": "shop", "c": "spring", "m": "m-1042", "r": "u-77"}


def signed_pairs(keyring: Keyring, params: dict[str, str], path: str = "/p.gif") -> list:
    return [*params.items(), ("sig", sign(keyring, path, params))]


def test_a_signature_names_the_newest_key_and_verifies():
    keyring = Keyring([OLD, NEW])
    sig = sign(keyring, "/p.gif", PARAMS)
    kid, _, tag = sig.partition(".")
    assert kid == "k2026" and len(tag) == 22  # 16 bytes of HMAC-SHA256, base64url, no padding
    assert MAC_BYTES == 16
    assert verify(keyring, "/p.gif", signed_pairs(keyring, PARAMS)) == "valid"


@pytest.mark.parametrize(
    "change",
    [
        {"r": "u-78"},  # enumerating another recipient
        {"m": "m-1043"},
        {"c": "spring2"},
        {"e": "click"},
        {"p.extra": "1"},  # a stored property added
        {"v": "1000"},  # a conversion value added
    ],
)
def test_a_tampered_url_fails(change):
    keyring = Keyring([NEW])
    pairs = dict(signed_pairs(keyring, PARAMS))
    pairs.update(change)
    assert verify(keyring, "/p.gif", list(pairs.items())) == "bad_signature"


def test_a_removed_parameter_fails():
    keyring = Keyring([NEW])
    pairs = [p for p in signed_pairs(keyring, PARAMS) if p[0] != "r"]
    assert verify(keyring, "/p.gif", pairs) == "bad_signature"


def test_the_path_is_signed_so_an_open_cannot_become_a_click():
    keyring = Keyring([NEW])
    assert verify(keyring, "/c", signed_pairs(keyring, PARAMS)) == "bad_signature"


def test_a_cache_buster_is_not_signed_and_does_not_break_the_signature():
    keyring = Keyring([NEW])
    pairs = [*signed_pairs(keyring, PARAMS), ("cb", "1732838400123")]
    assert verify(keyring, "/p.gif", pairs) == "valid"


def test_the_wrong_key_fails():
    mine = Keyring([("k2026", b"the-right-secret-0123456789")])
    theirs = Keyring([("k2026", b"a-different-secret-012345678")])
    assert verify(mine, "/p.gif", signed_pairs(theirs, PARAMS)) == "bad_signature"


def test_an_unknown_key_id_fails():
    assert verify(Keyring([OLD]), "/p.gif", signed_pairs(Keyring([NEW]), PARAMS)) == "unknown_key"


def test_rotation_old_signatures_verify_until_their_key_is_removed():
    before = Keyring([OLD])
    old_url = signed_pairs(before, PARAMS)
    rotated = Keyring([OLD, NEW])  # the new key is added last: it signs from now on
    assert rotated.signing_kid == "k2026"
    assert verify(rotated, "/p.gif", old_url) == "valid"  # emails already sent keep working
    assert verify(rotated, "/p.gif", signed_pairs(rotated, PARAMS)) == "valid"
    retired = Keyring([NEW])
    assert verify(retired, "/p.gif", old_url) == "unknown_key"


@pytest.mark.parametrize(
    ("sig", "outcome"),
    [
        ("", "malformed"),
        ("k2026", "malformed"),
        ("k2026.short", "malformed"),
        ("k 2026.AAAAAAAAAAAAAAAAAAAAAA", "malformed"),
        ("k2026.AAAAAAAAAAAAAAAAAAAAAA", "bad_signature"),
    ],
)
def test_malformed_signatures(sig, outcome):
    assert verify(Keyring([NEW]), "/p.gif", [*PARAMS.items(), ("sig", sig)]) == outcome


def test_unsigned_and_duplicated_parameters():
    keyring = Keyring([NEW])
    assert verify(keyring, "/p.gif", list(PARAMS.items())) == "unsigned"
    pairs = signed_pairs(keyring, PARAMS)
    # A second `r`: the signer and the reader could disagree on which one counts.
    assert verify(keyring, "/p.gif", [*pairs, ("r", "u-78")]) == "duplicate_param"
    assert verify(keyring, "/p.gif", [*pairs, pairs[-1]]) == "duplicate_param"


def test_the_canonical_form_cannot_be_shifted_by_separators_in_values():
    assert canonical("/p.gif", [("c", "a&r=b")]) != canonical("/p.gif", [("c", "a"), ("r", "b")])
    assert canonical("/p.gif", [("c", "x"), ("s", "y")]) == canonical(
        "/p.gif", [("s", "y"), ("c", "x")]
    )


def test_keys_parse_from_the_variable_and_the_file(tmp_path: Path):
    key_file = tmp_path / "keys"
    key_file.write_text("# rotated 2026-11\nk3:file-secret-0123456789abcdef\n")
    keyring = load_keyring("k1:first-secret-0123456789, k2:second-secret-012345678", key_file)
    assert keyring.kids == ("k1", "k2", "k3") and keyring.signing_kid == "k3"
    assert "secret" not in repr(keyring)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("k1", "item 1 is not 'kid:secret'"),
        ("k1:short", "shorter than 16"),
        ("bad kid:long-enough-secret-0123", "item 1 is not"),
        ("k1:long-enough-secret-0123,:x", "item 2 is not"),
    ],
)
def test_bad_keys_name_the_variable_and_never_the_secret(text, needle):
    with pytest.raises(SettingsError) as caught:
        parse_keys(text, "BEACON_SIGNING_KEYS")
    message = str(caught.value)
    assert message.startswith("BEACON_SIGNING_KEYS:") and needle in message
    assert "long-enough" not in message and "short" not in message.replace("shorter", "")


def test_settings_check_keys_policy_and_fallback(tmp_path: Path):
    with pytest.raises(SettingsError, match="BEACON_SIGNATURE_POLICY=drop needs"):
        Settings.from_env({"BEACON_SIGNATURE_POLICY": "drop"})
    with pytest.raises(SettingsError, match="BEACON_SIGNING_KEY_FILE: cannot read"):
        Settings.from_env({"BEACON_SIGNING_KEY_FILE": str(tmp_path / "missing")})
    with pytest.raises(SettingsError, match="BEACON_CLICK_FALLBACK_URL"):
        Settings.from_env({"BEACON_CLICK_FALLBACK_URL": "javascript:alert(1)"})
    settings = Settings.from_env(
        {
            "BEACON_SIGNING_KEYS": "k1:a-secret-that-is-long-enough",
            "BEACON_SIGNATURE_POLICY": "drop",
            "BEACON_CLICK_FALLBACK_URL": "https://shop.example/",
        }
    )
    assert settings.signature_policy == "drop"
    assert "a-secret-that-is-long-enough" not in repr(settings)  # settings may be logged
