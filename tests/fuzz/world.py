"""The fuzz test's world: users, money, rooms, messages, payment requests, and real tokens to mutate."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from sendinchat.v1 import chat_pb2, ledger_pb2
from tests.chat.support import group, say
from tests.helpers import Account, request_id, signed_up, signed_up_admin
from tests.ledger.support import deposit


@dataclass
class World:
    """Who can call, and what exists for them to name."""

    alice: Account
    bob: Account
    admin: Account
    victim: Account  # whose sessions Logout and ChangePassword may end
    known: list[str] = field(default_factory=list)  # real ids: users, rooms, transfers, requests
    tokens: list[str] = field(default_factory=list)  # real page tokens and cursors


async def build_world(server: Any) -> World:
    """Fund alice, give her rooms, history, transfers of every state and open requests."""
    stubs = server.stubs
    alice, bob, victim = await signed_up(stubs), await signed_up(stubs), await signed_up(stubs)
    admin = await signed_up_admin(server)
    world = World(alice, bob, admin, victim, known=[alice.id, bob.id, admin.id, alice.username, bob.username])
    await deposit(server, admin, alice, 1_000_000)
    await deposit(server, admin, alice, 500, "JPY")
    direct = (
        await stubs.chat.CreateRoom(
            chat_pb2.CreateRoomRequest(kind=chat_pb2.ROOM_KIND_DIRECT, member_user_ids=[bob.id]),
            metadata=alice.auth,
        )
    ).room
    team = await group(stubs, alice, bob, name="fuzz")
    for room in (direct, team):
        world.known.append(room.id)
        for i in range(3):
            await say(stubs, alice, room.id, f"m{i}", client_message_id=f"c{i}")
    for amount in (1, 2, 3):
        reply = await stubs.ledger.CreateTransfer(
            ledger_pb2.CreateTransferRequest(
                request_id=request_id(), to_user_id=bob.id, currency="USD", amount_minor=amount
            ),
            metadata=alice.auth,
        )
        world.known += [reply.transfer.id, reply.transfer.request_id]
    pending = await stubs.ledger.CreatePendingTransfer(
        ledger_pb2.CreatePendingTransferRequest(
            request_id=request_id(), to_user_id=bob.id, currency="USD", amount_minor=5
        ),
        metadata=alice.auth,
    )
    world.known.append(pending.transfer.id)
    ask = await stubs.chat.RequestPayment(
        chat_pb2.RequestPaymentRequest(
            request_id=request_id(), room_id=direct.id, from_user_id=alice.id, currency="USD", amount_minor=7
        ),
        metadata=bob.auth,
    )
    world.known.append(ask.message.payment_request.id)
    await _collect_tokens(stubs, world, direct.id)
    return world


async def _collect_tokens(stubs: Any, world: World, room_id: str) -> None:
    auth = world.alice.auth
    pages = await asyncio.gather(
        stubs.ledger.ListTransfers(ledger_pb2.ListTransfersRequest(page_size=1), metadata=auth),
        stubs.ledger.ListAccounts(ledger_pb2.ListAccountsRequest(page_size=1), metadata=auth),
        stubs.chat.ListRooms(chat_pb2.ListRoomsRequest(page_size=1), metadata=auth),
        stubs.chat.ListMessages(chat_pb2.ListMessagesRequest(room_id=room_id, page_size=1), metadata=auth),
    )
    world.tokens += [page.next_page_token for page in pages if page.next_page_token]
    watch = stubs.ledger.WatchTransfers(ledger_pb2.WatchTransfersRequest(), metadata=world.bob.auth)
    await watch.initial_metadata()
    await stubs.ledger.CreateTransfer(
        ledger_pb2.CreateTransferRequest(
            request_id=request_id(), to_user_id=world.bob.id, currency="USD", amount_minor=1
        ),
        metadata=auth,
    )
    event = await asyncio.wait_for(watch.read(), 10)
    watch.cancel()
    assert isinstance(event, ledger_pb2.WatchTransfersResponse)
    world.tokens.append(event.cursor)
