"""SENDINCHAT_SCHED_BATCH: the server's gRPC threads run under SCHED_BATCH unless it is off."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="SCHED_BATCH is a Linux policy")


def _policies(pid: int) -> dict[str, set[int]]:
    """Thread name -> the scheduling policies its threads run under."""
    found: dict[str, set[int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        name = (task / "comm").read_text().strip()
        found.setdefault(name, set()).add(os.sched_getscheduler(int(task.name)))
    return found


class TestSchedulingPolicy:
    async def test_event_loop_and_grpc_threads_run_sched_batch_by_default(self, servers, processes):
        process = await processes.start(await servers.database())
        await process.wait_serving()

        policies = _policies(process.process.pid)

        assert os.sched_getscheduler(process.process.pid) == os.SCHED_BATCH
        assert policies["event_engine"] == {os.SCHED_BATCH}

    async def test_every_thread_keeps_the_default_policy_when_switched_off(self, servers, processes):
        process = await processes.start(await servers.database(), SENDINCHAT_SCHED_BATCH="off")
        await process.wait_serving()

        policies = _policies(process.process.pid)

        assert "event_engine" in policies
        assert set().union(*policies.values()) == {os.SCHED_OTHER}
