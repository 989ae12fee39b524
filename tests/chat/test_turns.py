"""RoomTurns: one caller per room at a time, other rooms free, nothing kept once a room is quiet."""

from __future__ import annotations

import asyncio
import uuid

from server.chat.turns import RoomTurns


async def test_one_caller_per_room_at_a_time_and_rooms_do_not_wait_for_each_other() -> None:
    turns = RoomTurns()
    room, other = str(uuid.uuid4()), str(uuid.uuid4())
    inside: list[str] = []
    most = 0
    release = asyncio.Event()

    async def call(room_id: str) -> None:
        nonlocal most
        async with turns.of(room_id):
            inside.append(room_id)
            most = max(most, inside.count(room))
            try:
                await release.wait()
            finally:
                inside.remove(room_id)

    tasks = [asyncio.create_task(call(room)) for _ in range(5)]
    tasks.append(asyncio.create_task(call(other.upper())))  # the same room however it is spelt
    tasks.append(asyncio.create_task(call(other)))
    await asyncio.sleep(0.01)
    assert sorted(inside) == sorted([room, other.upper()])  # one each
    tasks[0].cancel()  # a caller that gives up in its turn lets the next one in
    release.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert most == 1
    assert turns.busy_rooms == 0


async def test_a_caller_that_gives_up_waiting_leaves_nothing_behind() -> None:
    turns = RoomTurns()
    room = str(uuid.uuid4())
    holding = asyncio.Event()
    release = asyncio.Event()

    async def hold() -> None:
        async with turns.of(room):
            holding.set()
            await release.wait()

    holder = asyncio.create_task(hold())
    await holding.wait()

    async def wait_for_the_turn() -> None:
        async with turns.of(room):
            raise AssertionError("cancelled before its turn")

    waiter = asyncio.create_task(wait_for_the_turn())
    await asyncio.sleep(0.01)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    release.set()
    await holder
    assert turns.busy_rooms == 0
