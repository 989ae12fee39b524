"""What chat's fields mean: message texts, client message ids, room names, member lists."""

from __future__ import annotations

from server.validation import Fields, Text

TEXT = Text(max_chars=4000, min_chars=1, multiline=True, visible=True)
CLIENT_MESSAGE_ID = Text(max_chars=64, indexed=True)  # part of a unique key
ROOM_NAME = Text(max_chars=100, min_chars=1, strip=True, visible=True)
MAX_MEMBERS = 100  # users named in one request
# Members of one room: every member is in each GetRoom and ListRooms answer about it.
MAX_ROOM_MEMBERS = 1000


def room_key(room_id: str) -> str:
    """A room id in its canonical form: the key of this process's per-room state.

    A malformed id comes back as it is; the request's own validation refuses it, beside its
    other faults.
    """
    return Fields().uuid("room_id", room_id) or room_id


def message_text(fields: Fields, text: str, field: str = "text") -> str:
    """A message text of 1-4000 characters that is not only whitespace."""
    if not text.strip():
        fields.add(field, "must not be empty")
    return fields.text(field, text, TEXT)


def client_message_id(
    fields: Fields, raw: str, *, required: bool, field: str = "client_message_id"
) -> str | None:
    """A client message id of 1-64 characters, or None when optional and empty."""
    if not raw:
        if required:
            fields.add(field, "required")
        return None
    return fields.text(field, raw, CLIENT_MESSAGE_ID)


def room_name(fields: Fields, raw: str) -> str:
    """A trimmed group name of 1-100 characters."""
    if not raw.strip():
        fields.add("name", "required for a group")
    return fields.text("name", raw, ROOM_NAME)


def user_ids(fields: Fields, raw: list[str] | tuple[str, ...], field: str) -> list[str]:
    """Canonical, de-duplicated user ids in the given order (at most 100)."""
    if len(raw) > MAX_MEMBERS:
        fields.add(field, f"at most {MAX_MEMBERS} users")
        return []
    seen: dict[str, None] = {}
    for index, value in enumerate(raw):
        seen[fields.uuid(f"{field}[{index}]", value)] = None
    seen.pop("", None)
    return list(seen)
