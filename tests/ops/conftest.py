"""Fixtures: servers as child processes, data folders for embedded-mode servers."""

from __future__ import annotations

from tests.ops.fixtures import embedded_data_dir, processes

__all__ = ["embedded_data_dir", "processes"]
