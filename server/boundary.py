"""The shape every request must have, checked before any handler runs: one walk over its fields.

Whatever a field means, no string may carry NUL (PostgreSQL refuses it in text) or exceed
MAX_STRING_BYTES, no enum may hold a number the contract does not define, and no Timestamp or
Duration may lie outside what protobuf can convert. The walk reads the message descriptors, so a
field added to the contract later is covered without a line here. A request body that does not
parse at all arrives as an Unparsable value instead of an exception deep in grpc.
What each field means (lengths, formats, ranges) is server/validation.py's job.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from server.errors import InvalidArgumentError

# The longest legitimate string is a 4,000-character message text: at most 16,000 bytes in UTF-8.
MAX_STRING_BYTES = 16 * 1024
# google.protobuf.Timestamp's own range: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999999999Z.
_MIN_SECONDS = -62_135_596_800
_MAX_SECONDS = 253_402_300_799
_MAX_NANOS = 999_999_999
_DURATION_MAX_SECONDS = 315_576_000_000
_TIMESTAMP = "google.protobuf.Timestamp"
_DURATION = "google.protobuf.Duration"


@dataclass(frozen=True, slots=True)
class Unparsable:
    """A request body that is not a valid message of the RPC's request type."""

    type_name: str

    def error(self) -> InvalidArgumentError:
        """What the client is told."""
        return InvalidArgumentError.field("request", f"is not a valid {self.type_name} message")


def lenient(deserialize: Callable[[bytes], Any], type_name: str) -> Callable[[bytes], Any]:
    """A request deserializer returning Unparsable instead of raising (its errors name parser classes)."""

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception:
            return Unparsable(type_name)

    return parse


def check(message: object, prefix: str = "") -> None:
    """Raise InvalidArgumentError naming every field of `message` that breaks the shape rules.

    Anything that is no protobuf message (a handler registered without a deserializer gets bytes)
    has no fields to check.
    """
    if not isinstance(message, Message):
        return
    violations = dict(_violations(message, prefix))
    if violations:
        raise InvalidArgumentError(violations)


def _violations(message: Message, prefix: str) -> Iterator[tuple[str, str]]:
    full_name = message.DESCRIPTOR.full_name
    if full_name in (_TIMESTAMP, _DURATION):
        why = _time_violation(full_name, message)
        if why:
            yield prefix.rstrip("."), why
        return
    for field, value in message.ListFields():
        path = prefix + field.name
        checker = _checker(field)
        if checker is None:
            continue
        if field.is_repeated:
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                yield from _map_violations(path, field.message_type, value)
                continue
            for index, item in enumerate(value):
                yield from checker(f"{path}[{index}]", item)
        else:
            yield from checker(path, value)


_Checker = Callable[[str, Any], Iterator[tuple[str, str]]]


@functools.cache
def _checker(field: FieldDescriptor) -> _Checker | None:
    if field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        return _string
    if field.enum_type is not None:
        return _enum_checker(frozenset(field.enum_type.values_by_number))
    if field.message_type is not None:
        return _check_message
    return None  # numbers: protobuf already holds them to their type's range


def _string(path: str, value: str | bytes) -> Iterator[tuple[str, str]]:
    # A character is at most 4 bytes: most strings need no encoding to know they are short enough.
    if len(value) * 4 > MAX_STRING_BYTES and len(value.encode() if isinstance(value, str) else value) > (
        MAX_STRING_BYTES
    ):
        yield path, f"must be at most {MAX_STRING_BYTES} bytes"
    elif isinstance(value, str) and "\x00" in value:
        yield path, "must not contain NUL characters"


def _enum_checker(known: frozenset[int]) -> _Checker:
    def check_enum(path: str, value: int) -> Iterator[tuple[str, str]]:
        if value not in known:
            yield path, f"{value} is not a value this API defines"

    return check_enum


def _check_message(path: str, value: Message) -> Iterator[tuple[str, str]]:
    yield from _violations(value, path + ".")


def _map_violations(path: str, entry: Descriptor, value: Any) -> Iterator[tuple[str, str]]:
    # Entries are named by position: a hostile key has no place in the answer.
    check_key, check_value = _checker(entry.fields_by_name["key"]), _checker(entry.fields_by_name["value"])
    for index, (key, item) in enumerate(value.items()):
        if check_key is not None:
            yield from check_key(f"{path}[{index}].key", key)
        if check_value is not None:
            yield from check_value(f"{path}[{index}]", item)


def _time_violation(full_name: str, value: Any) -> str:
    seconds, nanos = int(value.seconds), int(value.nanos)
    if full_name == _TIMESTAMP:
        if not _MIN_SECONDS <= seconds <= _MAX_SECONDS:
            return "must lie between 0001-01-01 and 9999-12-31"
        if not 0 <= nanos <= _MAX_NANOS:
            return "nanos must be between 0 and 999999999"
        return ""
    if (
        not -_DURATION_MAX_SECONDS <= seconds <= _DURATION_MAX_SECONDS
        or not -_MAX_NANOS <= nanos <= _MAX_NANOS
    ):
        return "is out of range"
    if (seconds > 0 > nanos) or (seconds < 0 < nanos):
        return "seconds and nanos must have the same sign"
    return ""
