"""A newcomer's first hour, run for real: `make deps` as root and as a user on a machine that
lacks a tool, and the installs `make run` and `make test` do in a fresh clone.

The clone is of this checkout's committed state (`git clone` of the repository root): a change
to the Makefile or pyproject.toml is seen here once it is committed."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPS = ROOT / "deploy" / "install-deps.sh"
KUSTOMIZE = "sigs.k8s.io/kustomize/kustomize/v5@v5.5.0"  # the pin install-deps.sh builds
# A command of each Debian package install-deps.sh checks for; promtool is the one hidden here.
PRESENT = ("java", "mvn", "chromium", "haproxy")
SBIN = "/usr/local/sbin:/usr/sbin:/sbin"
NOBODY = ("--reuid=65534", "--regid=65534", "--clear-groups")  # setpriv: nobody, no groups
# Stand-ins for the two installers: they write what they were asked into calls.log.
FAKE = '#!/bin/sh\necho "GOBIN=$GOBIN ${0##*/} $*" >> "${0%/*}/../calls.log"\n'
# Packages of the dev extra: none is in the runtime install `make run` does.
DEV_ONLY = ("pytest", "mypy", "playwright", "kubernetes_validate", "locust", "hypothesis")


def run(cmd: list[Any], timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    args = [str(c) for c in cmd]
    return subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )


@pytest.fixture
def machine() -> Iterator[Path]:
    """A PATH of fakes (apt-get, go) and of every checked tool but promtool and kustomize.

    In a world-readable directory: tmp_path is private to the user who runs the tests, and the
    script runs as nobody here."""
    home = Path(tempfile.mkdtemp(prefix="beacon-deps-"))
    try:
        home.chmod(0o755)
        fake, tools = home / "fake", home / "tools"
        fake.mkdir(mode=0o755)
        tools.mkdir(mode=0o755)
        for name in ("apt-get", "go"):
            (fake / name).write_text(FAKE)
            (fake / name).chmod(0o755)
        for name in PRESENT:
            found = shutil.which(name) or shutil.which(name, path=SBIN)
            assert found, f"{name} is not installed: `make deps`"
            (tools / name).symlink_to(found)
        (home / "calls.log").touch()
        (home / "calls.log").chmod(0o666)  # so a fake run as nobody could tell on itself
        shutil.copy(DEPS, home / "install-deps.sh")
        yield home
    finally:
        shutil.rmtree(home)


def deps(home: Path, *prefix: str) -> subprocess.CompletedProcess[str]:
    path = f"{home / 'fake'}:{home / 'tools'}"
    env = {"PATH": path, "HOME": str(home), "LANG": "C.UTF-8"}
    return run([*prefix, "/bin/bash", home / "install-deps.sh"], env=env, cwd=home)


def test_deps_as_a_user_names_what_is_missing_and_the_command(machine: Path) -> None:
    # CI runs as root: drop to nobody for real, as a developer's own account would be.
    as_user = (shutil.which("setpriv") or "setpriv", *NOBODY) if os.geteuid() == 0 else ()
    done = deps(machine, *as_user)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert "prometheus" in line and "kustomize" in line
    assert not any(name in line for name in ("default-jre-headless", "maven", "chromium"))
    assert line.endswith("sudo make deps")
    assert (machine / "calls.log").read_text() == ""  # neither apt-get nor go ran


@pytest.mark.skipif(os.geteuid() != 0, reason="the install branch runs as root, as CI does")
def test_deps_as_root_installs_what_is_missing(machine: Path) -> None:
    done = deps(machine)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (machine / "calls.log").read_text().splitlines() == [
        f"GOBIN=/usr/local/bin go install {KUSTOMIZE}",
        "GOBIN= apt-get update -qq",
        "GOBIN= apt-get install -y -qq --no-install-recommends prometheus",
    ]


def test_deps_with_everything_present_say_nothing() -> None:
    # `make test` runs this step every time (after `make deps` in CI): quiet and successful.
    done = run(["bash", DEPS])
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def make(clone: Path, target: str) -> str:
    """`make <target>` in the clone, as from a fresh terminal; its output, asserted clean."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    env.pop("VIRTUAL_ENV", None)
    done = run(["make", target], cwd=clone, env=env, timeout=540)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "deprecat" not in out.lower() and "warning" not in out.lower(), out
    return out


def installed(python: Path, module: str) -> bool:
    code = "import importlib.util, sys; sys.exit(importlib.util.find_spec(sys.argv[1]) is None)"
    return run([python, "-c", code, module], cwd=python.parent).returncode == 0


@pytest.mark.timeout(600)
def test_a_fresh_clone_installs_the_runtime_for_run_and_the_dev_tools_for_test(
    tmp_path: Path,
) -> None:
    clone = tmp_path / "beacon"
    cloned = run(["git", "clone", "--quiet", ROOT, clone])
    assert cloned.returncode == 0, f"the tests run in a git checkout: {cloned.stderr}"
    python, beacon = clone / ".venv/bin/python", clone / ".venv/bin/beacon"

    make(clone, "install-run")  # what `make run` installs before it starts
    helped = run([beacon, "--help"])
    assert helped.returncode == 0 and "run" in helped.stdout, helped.stderr
    assert [m for m in DEV_ONLY if installed(python, m)] == []
    assert "Nothing to be done" in make(clone, "install-run")

    make(clone, "install")  # what `make test` and `make lint` install
    assert [m for m in DEV_ONLY if not installed(python, m)] == []
    assert "Nothing to be done" in make(clone, "install-run")
    assert "Nothing to be done" in make(clone, "install")
    shutil.rmtree(clone)  # ~1 GB of venv; a failed run keeps it to look at
