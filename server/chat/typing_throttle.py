"""How often one Connect stream announces typing: once a room per interval, in bounded memory.

Typing is a hint: one announcement a room per TYPING_INTERVAL_SECONDS is all the others need, and
a client sending more must not cost the database or flood the room's other streams.
"""

from __future__ import annotations

import time

TYPING_INTERVAL_SECONDS = 1.0
TYPED_ROOMS_KEPT = 256  # a stream's memory of where it typed stays bounded


class TypingThrottle:
    """When this stream last announced typing in each room, and where that was refused."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._refused: set[str] = set()

    def rooms(self) -> list[str]:
        """The rooms remembered now (at most TYPED_ROOMS_KEPT)."""
        return list(self._last)

    def due(self, room_id: str) -> bool:
        """Whether an announcement in the room may go now; if so, it is counted."""
        now = time.monotonic()
        if not self._due_at(room_id, now):
            return False
        self._refused.discard(room_id)
        if len(self._last) >= TYPED_ROOMS_KEPT:  # only the last interval's entries matter
            self._last = {r: t for r, t in self._last.items() if now - t < TYPING_INTERVAL_SECONDS}
            if len(self._last) >= TYPED_ROOMS_KEPT:
                self._last.clear()
            self._refused &= self._last.keys()
        self._last[room_id] = now
        return True

    def refuse(self, room_id: str) -> None:
        """The announcement just counted was refused (not a member): so are repeats this interval."""
        self._refused.add(room_id)

    def refused(self, room_id: str) -> bool:
        """Whether typing in the room was refused within the interval (answer it again, unasked)."""
        return room_id in self._refused and not self._due_at(room_id, time.monotonic())

    def _due_at(self, room_id: str, now: float) -> bool:
        return now - self._last.get(room_id, -TYPING_INTERVAL_SECONDS) >= TYPING_INTERVAL_SECONDS
