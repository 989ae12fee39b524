"""The committed stubs match the protos, and the protos pass buf lint."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.contract import tools
from tests.harness import REPO

COMMITTED = REPO / "clients" / "sendinchat" / "v1"


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


class TestStubs:
    async def test_regenerated_files_equal_committed_ones_when_protos_are_unchanged(self, tmp_path):
        result = await tools.run(sys.executable, str(REPO / "clients" / "regenerate_stubs.py"), str(tmp_path))
        assert result.returncode == 0, result.stderr
        generated = _files(tmp_path / "sendinchat" / "v1")
        committed = _files(COMMITTED)
        assert sorted(generated) == sorted(committed), (
            "files added or removed: run clients/regenerate_stubs.py"
        )
        stale = [name for name in generated if generated[name] != committed[name]]
        assert stale == [], f"stale generated files {stale}: run python clients/regenerate_stubs.py"


class TestBufLint:
    async def test_passes_when_run_from_the_repo_root(self):
        result = await tools.run("buf", "lint")
        assert result.returncode == 0, result.stdout + result.stderr
