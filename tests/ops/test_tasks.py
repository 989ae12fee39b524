"""Ending background tasks: a caller cancelled while it waits for them stays cancelled."""

from __future__ import annotations

import asyncio

import pytest

from server.tasks import cancel_and_wait


async def _slow_to_stop(stopping: asyncio.Event) -> None:
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        stopping.set()
        await asyncio.sleep(0.2)  # cleaning up, as a listener closing its connection does
        raise


class TestCancelAndWait:
    async def test_a_caller_cancelled_while_it_waits_is_still_cancelled(self):
        stopping = asyncio.Event()
        worker = asyncio.create_task(_slow_to_stop(stopping))
        await asyncio.sleep(0)

        async def caller() -> str:
            await cancel_and_wait(worker)
            return "went on as if never cancelled"  # what suppress(CancelledError) let happen

        waiting = asyncio.create_task(caller())
        await stopping.wait()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    async def test_raises_what_a_task_failed_with_before_it_was_cancelled(self):
        async def broken() -> None:
            raise LookupError("lost")

        task = asyncio.create_task(broken())
        await asyncio.sleep(0)
        with pytest.raises(LookupError):
            await cancel_and_wait(task)
