"""Ending background tasks."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(*tasks: asyncio.Task[Any]) -> None:
    """Cancel the tasks, wait until they have ended, and raise the first error one ended with.

    Awaiting each inside suppress(CancelledError) would also swallow a cancellation of the caller
    arriving meanwhile, and a caller in a loop would then go on as if it had never been cancelled.
    """
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    await asyncio.wait(tasks)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]  # not None, checked above
