"""The embedded store's chDB sessions, in a fresh process: the configuration they carry and the
libraries they leave out (memory: docs/performance.md "Consumer")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# A reader's session first (chDB takes the configuration of a process's first session), then
# the writer: what the writer's tables get, and whether pyarrow was loaded on the way.
PROBE = """
import json, sys
from pathlib import Path
from analytics.store.chdb import ChdbWriter, open_session
path = Path(sys.argv[1])
reader = open_session(path, {"readonly": "1"})
writer = ChdbWriter(path)
names = ("'max_compress_block_size', 'fsync_after_insert', 'fsync_part_directory', "
         "'min_rows_to_fsync_after_merge'")
block, fsync, fsync_dir, fsync_merged = writer.query_sync(
    f"SELECT value FROM system.merge_tree_settings WHERE name IN ({names}) "
    "ORDER BY indexOf([" + names + "], name)", "TSV"
).split()
with open("/proc/self/maps") as maps:
    arrow_mapped = any("libarrow" in line for line in maps)
print(json.dumps({"block": block, "fsync": [fsync, fsync_dir, fsync_merged],
                  "pyarrow": sys.modules.get("pyarrow") is not None, "arrow_mapped": arrow_mapped}))
"""


def test_a_fresh_process_opens_the_store_with_its_config_and_without_arrow(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path / "clickhouse")],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    facts = json.loads(out.strip().splitlines()[-1])
    # Parts are written in compression blocks of 64 KiB, not ClickHouse's 1 MiB.
    assert facts["block"] == "65536"
    # An insert's part is on disk when it returns (the consumer then lets go of its source),
    # and a merged or mutated one (an erasure's DELETE) before it replaces its sources.
    assert facts["fsync"] == ["1", "1", "1"]
    assert not facts["pyarrow"]
    assert not facts["arrow_mapped"]
