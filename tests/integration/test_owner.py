"""contract/owner.py: one owner per role of a data directory, gone with its process however it
ends, shared with the children it passes its claim to."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from contract import owner
from tests.support.helpers import wait_for

HOLDER = """
import sys, time
from pathlib import Path
from contract import owner
owner.claim(Path(sys.argv[1]), owner.CONSUMER, "holder", store_url="http://127.0.0.1:1")
print("held", flush=True)
time.sleep(120)
"""


def hold_in_child(data_dir: Path) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(data_dir)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


def end(child: subprocess.Popen[str]) -> None:
    child.kill()
    child.wait()
    assert child.stdout is not None
    child.stdout.close()


def test_a_role_has_one_owner_and_says_who(tmp_path: Path) -> None:
    assert owner.owner(tmp_path, owner.CONSUMER) is None
    child = hold_in_child(tmp_path)
    try:
        found = owner.owner(tmp_path, owner.CONSUMER)
        assert found is not None
        assert (found.pid, found.command, found.store_url) == (
            child.pid, "holder", "http://127.0.0.1:1"
        )  # fmt: skip
        with pytest.raises(owner.InUse) as refused:
            owner.claim(tmp_path, owner.CONSUMER, "second")
        assert str(refused.value).startswith(f"{tmp_path}/ is in use by holder (pid {child.pid}")
        # Another role of the same directory is free.
        collector = owner.claim(tmp_path, owner.COLLECTOR, "collector")
        owner.release(collector)
    finally:
        end(child)


def test_a_killed_owner_leaves_no_lock_behind(tmp_path: Path) -> None:
    child = hold_in_child(tmp_path)
    end(child)  # SIGKILL: nothing of it runs to let go
    assert owner.lock_path(tmp_path, owner.CONSUMER).exists()  # the file stays, the lock not
    wait_for(lambda: owner.owner(tmp_path, owner.CONSUMER) is None, "the lock to go", 30)
    with owner.holding(tmp_path, owner.CONSUMER, "after") as held:
        assert owner.owner(tmp_path, owner.CONSUMER) is not None
        assert held.role == owner.CONSUMER


def test_a_child_works_under_the_claim_passed_to_it(tmp_path: Path) -> None:
    held = owner.claim(tmp_path, owner.CONSUMER, "parent")
    env = {**os.environ, owner.CLAIMS_ENV: owner.claimed_env({owner.CONSUMER: held})}
    script = (
        "import os, sys; from pathlib import Path; from contract import owner; "
        "owner.claim(Path(sys.argv[1]), owner.CONSUMER, 'child', "
        "owner.inherited(os.environ[owner.CLAIMS_ENV])); print('ok')"
    )
    passed = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        env=env, pass_fds=(held.fd,), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert passed.stdout.strip() == "ok", passed.stderr
    # Without the descriptor the same variable proves nothing: the child is refused.
    alone = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "InUse" in alone.stderr
    owner.release(held)
    assert owner.owner(tmp_path, owner.CONSUMER) is None


SERVE_WITH_KAFKA = """
import sys, time
from beacon.claims import claim_data_dir
from collector.settings import Settings
from consumers.settings import ConsumerSettings
env = {"BEACON_DATA_DIR": sys.argv[1], "BEACON_KAFKA_BOOTSTRAP": "127.0.0.1:1"}
claim_data_dir("serve", Settings.from_env(env), ConsumerSettings.from_env(env), env)
print("held", flush=True)
time.sleep(120)
"""


def test_one_kind_of_process_reads_a_spool(tmp_path: Path) -> None:
    """A collector that sends its spool to Kafka and a consumer that stores the spool would
    both take its segments: the second to come is refused. A consumer of Kafka is not."""
    from beacon.claims import claim_data_dir
    from collector.settings import Settings
    from consumers.settings import ConsumerSettings

    child = subprocess.Popen(
        [sys.executable, "-c", SERVE_WITH_KAFKA, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        spool_env = {"BEACON_DATA_DIR": str(tmp_path)}
        with pytest.raises(owner.InUse) as refused:
            claim_data_dir(
                "consume", Settings.from_env(spool_env), ConsumerSettings.from_env(spool_env),
                spool_env,
            )  # fmt: skip
        assert refused.value.role == owner.SPOOL_READER
        assert f"is in use by beacon serve (pid {child.pid}" in str(refused.value)
        kafka_env = {**spool_env, "BEACON_KAFKA_BOOTSTRAP": "127.0.0.1:1"}
        claims = claim_data_dir(
            "consume", Settings.from_env(kafka_env), ConsumerSettings.from_env(kafka_env),
            kafka_env,
        )  # fmt: skip
        assert set(claims) == {owner.CONSUMER}
        for claim in claims.values():
            owner.release(claim)
    finally:
        end(child)
