"""Signed tracking URLs: HMAC-SHA256 over a canonical form of the parameters, with key ids.

A signature is `sig=<kid>.<mac>`: the id of the key that made it, then the first 16 bytes of
HMAC-SHA256(key, canonical form) in unpadded base64url (22 characters). Several keys are
accepted so they can rotate; the newest (the last configured) signs. NIST SP 800-107r1 allows
truncating HMAC output; 128 bits keeps guessing a tag hopeless at any request rate.

The canonical form covers the path (so an open pixel's signature cannot be replayed as a
click) and every parameter that ends up stored: the known event keys and `p.*` properties,
plus the click destination. Unknown parameters, such as an ad server's cache buster, are not
stored and not signed, so they may be added freely.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import quote

from collector import event as ev
from contract.config import MIN_SECRET_CHARS, SettingsError, is_placeholder

if TYPE_CHECKING:
    from prometheus_client import Counter

SIG_PARAM = "sig"
MAC_BYTES = 16
KEY_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}\Z")
MAC_RE = re.compile(r"^[A-Za-z0-9_-]{22}\Z")
DOMAIN = b"beacon-url-v1"  # versions the canonical form

# Parameters the click redirect takes besides the event keys: the destination.
CLICK_KEYS = frozenset({"d"})
SIGNED_KEYS = ev.KNOWN_KEYS | CLICK_KEYS

# Outcomes of a check, also the `outcome` label of beacon_signature_checks_total (and, but for
# VALID, the `reason` of beacon_click_refused_total), each made at 0 by collector/metrics.py.
VALID = "valid"
UNSIGNED = "unsigned"
DUPLICATE_PARAM = "duplicate_param"
MALFORMED = "malformed"
UNKNOWN_KEY = "unknown_key"
BAD_SIGNATURE = "bad_signature"
OUTCOMES = (VALID, UNSIGNED, DUPLICATE_PARAM, MALFORMED, UNKNOWN_KEY, BAD_SIGNATURE)


class Keyring:
    """Signing keys by id, oldest first; the last one signs. Its repr shows ids only."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Iterable[tuple[str, bytes]] = ()) -> None:
        self._keys: dict[str, bytes] = {}
        for kid, secret in keys:
            self._keys.pop(kid, None)  # a repeated id: the later secret wins, and is newest
            self._keys[kid] = secret

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __repr__(self) -> str:
        return f"Keyring(kids={list(self._keys)})"

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    @property
    def signing_kid(self) -> str:
        if not self._keys:
            raise LookupError("no signing key configured")
        return next(reversed(self._keys))

    def get(self, kid: str) -> bytes | None:
        return self._keys.get(kid)


def parse_keys(text: str, variable: str) -> list[tuple[str, bytes]]:
    """`kid:secret` items separated by commas or newlines; errors name the variable only,
    never a secret."""
    keys = []
    for number, item in enumerate(re.split(r"[,\n]", text), start=1):
        item = item.strip()
        if not item or item.startswith("#"):
            continue
        kid, sep, secret = item.partition(":")
        kid, secret = kid.strip(), secret.strip()
        if not sep or not KEY_ID_RE.match(kid):
            raise SettingsError(
                f"{variable}: item {number} is not 'kid:secret' with a key id of letters, "
                "digits, - or _ (up to 32)"
            )
        if len(secret) < MIN_SECRET_CHARS:
            raise SettingsError(
                f"{variable}: the secret of key {kid!r} is shorter than {MIN_SECRET_CHARS} chars"
            )
        if is_placeholder(secret):  # copied from an example: a public key, however long
            raise SettingsError(
                f"{variable}: the secret of key {kid!r} is a placeholder; set a random one, "
                "e.g. `openssl rand -hex 32`"
            )
        keys.append((kid, secret.encode()))
    return keys


def load_keyring(keys_text: str, key_file: Path | None) -> Keyring:
    """Keys from BEACON_SIGNING_KEYS, then BEACON_SIGNING_KEY_FILE (its keys are newer)."""
    keys = parse_keys(keys_text, "BEACON_SIGNING_KEYS")
    if key_file is not None:
        try:
            text = key_file.read_text()
        except OSError as exc:
            raise SettingsError(
                f"BEACON_SIGNING_KEY_FILE: cannot read {key_file}: {exc.strerror}"
            ) from None
        keys += parse_keys(text, "BEACON_SIGNING_KEY_FILE")
    return Keyring(keys)


def is_signed_key(key: str) -> bool:
    return key in SIGNED_KEYS or key.startswith("p.")


def canonical(path: str, params: Iterable[tuple[str, str]]) -> bytes:
    """Path and signed parameters, sorted, each key and value percent-encoded: no value can
    smuggle in a separator and shift what was signed."""
    pairs = sorted((k, v) for k, v in params if is_signed_key(k))
    body = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs)
    return b"\n".join((DOMAIN, path.encode(), body.encode()))


def mac(secret: bytes, message: bytes) -> str:
    digest = hmac.new(secret, message, hashlib.sha256).digest()[:MAC_BYTES]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sign(keyring: Keyring, path: str, params: Mapping[str, str]) -> str:
    """The `sig` value for `params` on `path`, made with the newest key."""
    kid = keyring.signing_kid
    secret = keyring.get(kid)
    assert secret is not None
    return f"{kid}.{mac(secret, canonical(path, params.items()))}"


def verify(keyring: Keyring, path: str, pairs: Iterable[tuple[str, str]]) -> str:
    """Check a request's query pairs; returns VALID, UNSIGNED or the reason it is invalid."""
    signatures = []
    signed: list[tuple[str, str]] = []
    seen: set[str] = set()
    for key, value in pairs:
        if key == SIG_PARAM:
            signatures.append(value)
        elif is_signed_key(key):
            # A repeated key would let a reader and the signer disagree on which one counts.
            if key in seen:
                return DUPLICATE_PARAM
            seen.add(key)
            signed.append((key, value))
    if not signatures:
        return UNSIGNED
    if len(signatures) > 1:
        return DUPLICATE_PARAM
    kid, dot, tag = signatures[0].partition(".")
    if not dot or not KEY_ID_RE.match(kid) or not MAC_RE.match(tag):
        return MALFORMED
    secret = keyring.get(kid)
    if secret is None:
        return UNKNOWN_KEY
    # compare_digest: the time taken does not tell an attacker how many characters matched.
    if not hmac.compare_digest(mac(secret, canonical(path, signed)), tag):
        return BAD_SIGNATURE
    return VALID


class Tally(Protocol):
    """A counter child's increments kept as a number (collector/tallies.py)."""

    def inc(self) -> None: ...


class GateMetrics(Protocol):
    """The counters a SignatureGate adds to (collector/metrics.py's CollectorMetrics; named
    structurally: that module makes these counters' children from OUTCOMES, so it imports
    this one)."""

    events_dropped: Counter

    @property
    def signature_tallies(self) -> Mapping[tuple[str, str], Tally]:
        """signature_checks' tallies, by (endpoint, outcome)."""


class SignatureGate:
    """The pixel's decision on a signature: verified, recorded unverified, or dropped.

    Without keys nothing can be verified: every event is recorded unverified (the settings
    refuse the drop policy without keys).
    """

    def __init__(self, keyring: Keyring, policy: str, metrics: GateMetrics) -> None:
        self.keyring = keyring
        self.drop = policy == "drop"
        self.metrics = metrics
        # Tallied: with keys configured every pixel is checked, and a labelled inc() was ~2%
        # of a worker's CPU under load (collector/tallies.py). By (endpoint, outcome).
        self.checks = metrics.signature_tallies

    def check(self, path: str, pairs: Iterable[tuple[str, str]], endpoint: str) -> bool | None:
        """True: verified; False: record as unverified; None: drop (counted here)."""
        if not self.keyring:
            return False
        outcome = verify(self.keyring, path, pairs)
        self.checks[endpoint, outcome].inc()
        if outcome == VALID:
            return True
        if self.drop:
            reason = UNSIGNED if outcome == UNSIGNED else BAD_SIGNATURE
            self.metrics.events_dropped.labels(reason).inc()
            return None
        return False
