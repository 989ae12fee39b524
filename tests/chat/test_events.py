"""The chat event codec: what the SQL emitters send is what server/chat/events.py reads, both ways."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from server.chat import events

ROOM, USER = str(uuid.uuid4()), str(uuid.uuid4())
EVERY_KIND: list[events.ChatEvent] = [
    events.MessageStored(ROOM, 42),
    events.MemberRemoved(ROOM, USER),
    events.ReadMarked(ROOM, USER, 7),
    events.Typing(ROOM, USER),
    events.PresenceChanged(ROOM, USER, True),
    events.PresenceChanged(ROOM, USER, False),
]
# The SQL function that emits each event (server/db/functions/chat_events.sql), with its arguments.
_EMITTERS = [
    ("SELECT chat_notify_message($1::uuid, 42)", (ROOM,)),
    ("SELECT chat_notify_removed($1::uuid, $2::uuid)", (ROOM, USER)),
    ("SELECT chat_notify_read($1::uuid, $2::uuid, 7)", (ROOM, USER)),
    ("SELECT chat_notify_typing($1::uuid, $2::uuid)", (ROOM, USER)),
    ("SELECT chat_notify_presence($1::uuid, $2::uuid, true)", (ROOM, USER)),
    ("SELECT chat_notify_presence($1::uuid, $2::uuid, false)", (ROOM, USER)),
]


class TestCodec:
    @pytest.mark.parametrize("event", EVERY_KIND)
    def test_decoding_an_encoded_event_gives_it_back(self, event):
        assert events.decode(events.encode(event)) == event

    @pytest.mark.parametrize(
        "payload",
        [
            "",
            "m",
            f"m|{ROOM}",
            f"m|{ROOM}|\u00b2",
            f"m|{ROOM}|-1",
            f"m|{ROOM}|{2**63}",  # past any sequence a bigint holds
            f"r|{ROOM}|{USER}|9999999999999999999",
            f"q|{ROOM}|{USER}",
            f"p|{ROOM}|{USER}|2",
            f"x|nope|{USER}",
        ],
    )
    def test_a_payload_of_no_known_shape_is_a_value_error(self, payload):
        with pytest.raises(ValueError):
            events.decode(payload)

    async def test_what_the_sql_emitters_send_decodes_to_each_event(self, servers):
        url = await servers.database()
        listener, writer = await asyncpg.connect(url), await asyncpg.connect(url)
        received: asyncio.Queue[str] = asyncio.Queue()
        try:
            await listener.add_listener("chat_events", lambda *args: received.put_nowait(str(args[3])))
            for sql, args in _EMITTERS:
                await writer.execute(sql, *args)
            payloads = [await asyncio.wait_for(received.get(), 10) for _ in _EMITTERS]
        finally:
            await listener.close()
            await writer.close()
        assert [events.decode(p) for p in payloads] == EVERY_KIND
