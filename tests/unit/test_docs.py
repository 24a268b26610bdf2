"""The documentation as files: the README stays a short front door, every relative link in it
and in docs/ reaches a file and a heading, and docs/settings.md names every setting.

Pure file reading: the settings are found by parsing the dataclasses' source, not by importing
them. Anchors follow GitHub's rule: the heading's text in lower case, every character but
letters, digits, spaces, `-` and `_` dropped, spaces turned into `-`, and `-1`, `-2`, ...
appended to repeats.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
SETTINGS_DOC = ROOT / "docs" / "settings.md"
# Where the settings dataclasses live; contract/common.py holds the prefix of their variables.
SETTINGS_SOURCES = ("collector/settings.py", "analytics/settings.py", "consumers/settings.py")
MAX_README_LINES = 170

FENCE_RE = re.compile(r"^\s*(```|~~~)")
HEADING_RE = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
CODE_SPAN_RE = re.compile(r"`[^`]*`")
# [text](target) and ![alt](target), with an optional "title".
LINK_RE = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
SCHEME_RE = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def prose_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of every line outside fenced code blocks."""
    lines, fence = [], None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        match = FENCE_RE.match(line)
        if match:
            if fence is None:
                fence = match.group(1)
            elif match.group(1) == fence:
                fence = None
            continue
        if fence is None:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text (markdown links reduced to their text first)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def headings(path: Path) -> list[tuple[int, str]]:
    """(level, text) of every heading outside code blocks."""
    found = []
    for _, line in prose_lines(path):
        match = HEADING_RE.match(line)
        if match:
            found.append((len(match.group(1)), match.group(2)))
    return found


def anchors(path: Path) -> set[str]:
    seen: Counter[str] = Counter()
    result = set()
    for _, text in headings(path):
        base = slug(text)
        result.add(f"{base}-{seen[base]}" if seen[base] else base)
        seen[base] += 1
    return result


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link outside code blocks and code spans (a code span
    inside a link's text, as in [`beacon url`](...), leaves the link)."""
    found = []
    for number, line in prose_lines(path):
        for match in LINK_RE.finditer(CODE_SPAN_RE.sub("", line)):
            found.append((number, match.group(1)))
    return found


def broken(path: Path, target: str) -> str | None:
    """Why a relative link does not resolve, or None."""
    file_part, _, anchor = target.partition("#")
    dest = (path.parent / file_part).resolve() if file_part else path
    if not dest.exists():
        return f"no file {file_part}"
    if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
        return f"no heading #{anchor} in {dest.name}"
    return None


def test_readme_is_a_short_front_door():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines"
    assert lines[0].startswith("# "), "the title first"
    first = [line for line in lines[1:] if line.strip()]
    assert first[0] == "```sh", "the two commands right after the title"
    assert first[1].startswith("make run ") and first[2].startswith("make test "), first[:3]
    assert first[3] == "```"


def test_readme_table_of_contents_reaches_every_section():
    sections = [text for level, text in headings(README) if level == 2]
    assert "Contents" in sections
    body = README.read_text(encoding="utf-8").split("## Contents", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"\]\((#[^)]+)\)", body)
    assert listed, "the table of contents links to the README's sections"
    readme_anchors = anchors(README)
    assert [t for t in listed if t[1:] not in readme_anchors] == []
    expected = {slug(text) for text in sections if text != "Contents"}
    assert expected - {t[1:] for t in listed} == set(), "a section missing from the contents"


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_reach_a_file_and_a_heading(path: Path):
    problems = []
    for number, target in links(path):
        if SCHEME_RE.match(target):
            continue  # http(s), mailto: not checked here
        reason = broken(path, target)
        if reason:
            problems.append(f"{path.name}:{number}: {target}: {reason}")
    assert problems == []


def setting_variables() -> set[str]:
    """BEACON_* names of every field of the settings dataclasses, read from their source."""
    common = ast.parse((ROOT / "contract" / "common.py").read_text(encoding="utf-8"))
    prefix = next(
        node.value.value
        for node in common.body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "PREFIX" for t in node.targets)
        and isinstance(node.value, ast.Constant)
    )
    names = set()
    for source in SETTINGS_SOURCES:
        tree = ast.parse((ROOT / source).read_text(encoding="utf-8"))
        for cls in tree.body:
            if isinstance(cls, ast.ClassDef) and cls.name.endswith("Settings"):
                for node in cls.body:
                    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                        names.add(prefix + node.target.id.upper())  # contract/config.py's rule
    return names


def test_every_setting_is_in_the_settings_page():
    variables = setting_variables()
    assert len(variables) > 50, "the settings dataclasses were not found"
    documented = set(re.findall(r"^\| `(BEACON_\w+)` \|", SETTINGS_DOC.read_text(), re.M))
    assert sorted(variables - documented) == []
    # And nothing documented that no code reads (the `beacon` command reads a few itself).
    command = set(re.findall(r'"(BEACON_\w+)"', (ROOT / "beacon" / "__main__.py").read_text()))
    assert sorted(documented - variables - command) == []


def test_the_anchor_rule():
    assert slug("Multi-core: `beacon serve --workers N`") == "multi-core-beacon-serve---workers-n"
    assert slug("Results: 2026-11-29, with the pixel fast path") == (
        "results-2026-11-29-with-the-pixel-fast-path"
    )
    assert slug("BeaconDLQNotEmpty") == "beacondlqnotempty"
