"""Hypothesis strategies that build any request of the contract from its message descriptors.

Every field of every message is covered, including fields added later: strings from a hostile
alphabet (NUL, Unicode digits, overlong, real ids of the fuzz world, mutated page tokens), integers
at and past their edges, enum numbers the contract does not define, timestamps outside protobuf's
range, nested messages and repeated fields.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from google.protobuf import message_factory, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

HOSTILE_TEXT = [
    "",
    " ",
    "\x00",
    "a\x00",
    "hi\x00there",
    "\u00b2",  # '²'.isdigit() is True, int('²') fails
    "\u0663\u0665",  # Arabic-Indic digits
    "1e30",
    "-1",
    "99999999999999999999",
    "9223372036854775808",
    "USD",
    "usd",
    "XXX",
    "'; DROP TABLE users; --",
    "%_\\",
    "\U0001f642" * 20,
    "\u202e\ufeff",
    "00000000-0000-0000-0000-000000000000",
    "{00000000-0000-0000-0000-000000000000}",
    "urn:uuid:00000000-0000-0000-0000-000000000000",
    "0000000000000000000000000000000\u0663",
    "NaN",
    "infinity",
    "t1|\u00b2|all:",
    "w1|\u00b2|1",
]
_INT64 = (-(2**63), 2**63 - 1)
_INT32 = (-(2**31), 2**31 - 1)
_EDGE_INTS = [0, 1, -1, 2, 100, 101, 10**15, 10**15 + 1, 2**31 - 1, -(2**31), 2**63 - 1, -(2**63)]
_TIMESTAMP_SECONDS = [0, 253_402_300_799, 253_402_300_800, -62_135_596_800, -62_135_596_801, 2**40, -(2**40)]
_NANOS = [0, 999_999_999, 1_000_000_000, -1, 2**31 - 1]


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def forged_tokens(real: Sequence[str]) -> st.SearchStrategy[str]:
    """Page tokens and cursors: real ones mutated, and forged ones in the server's own format."""
    parts = st.sampled_from(
        ["\u00b2", "1e30", "99999999999999999999", "-1", "0", "\x00", "", "x" * 40, "1:9:12"]
    )
    tags = st.sampled_from(["a1", "t1", "w1", "m1", "r1", "t2", "x"])
    forged = st.builds(lambda tag, p: _b64("|".join([tag, *p])), tags, st.lists(parts, max_size=4))
    if not real:
        return forged
    mutated = st.builds(
        lambda token, cut, extra: token[:cut] + extra,
        st.sampled_from(list(real)),
        st.integers(0, 80),
        st.sampled_from(["", "A", "=", "!", "\x00", _b64("|1")]),
    )
    return st.one_of(forged, mutated, st.sampled_from(list(real)))


def text(known: Sequence[str], tokens: Sequence[str]) -> st.SearchStrategy[str]:
    """Any string a hostile or careless client might send."""
    options: list[st.SearchStrategy[str]] = [
        st.sampled_from(HOSTILE_TEXT),
        st.text(max_size=40),
        st.integers(60, 20_000).map(lambda n: "a" * n),
        forged_tokens(tokens),
    ]
    if known:
        options.append(st.sampled_from(list(known)))
    return st.one_of(*options)


def _integer(low: int, high: int) -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from([i for i in _EDGE_INTS if low <= i <= high]), st.integers(low, high))


def _timestamps() -> st.SearchStrategy[timestamp_pb2.Timestamp]:
    seconds = st.one_of(st.sampled_from(_TIMESTAMP_SECONDS), st.integers(1_700_000_000, 1_900_000_000))
    return st.builds(
        timestamp_pb2.Timestamp,
        seconds=seconds,
        nanos=st.one_of(st.sampled_from(_NANOS), st.integers(0, 999_999_999)),
    )


class Requests:
    """Builds strategies for request messages, sprinkling in the world's real ids and tokens."""

    def __init__(self, known: Sequence[str], tokens: Sequence[str]) -> None:
        self._text = text(known, tokens)
        self._cache: dict[str, st.SearchStrategy[Any]] = {}

    def message(self, descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
        """Any message of this type (a subset of its fields set, each with any value)."""
        if descriptor.full_name == "google.protobuf.Timestamp":
            return _timestamps()
        cls = message_factory.GetMessageClass(descriptor)
        fields = [f for f in descriptor.fields if depth < 3 or f.message_type is None]
        if not fields:
            return st.just(cls())

        def build(values: dict[str, Any]) -> Message:
            message = cls()
            for name, value in values.items():
                field = descriptor.fields_by_name[name]
                if field.is_repeated:
                    getattr(message, name).extend(value)
                elif field.message_type is not None:
                    getattr(message, name).CopyFrom(value)
                else:
                    setattr(message, name, value)
            return message

        chosen = st.lists(st.sampled_from(fields), unique=True, max_size=len(fields))
        return chosen.flatmap(
            lambda picked: st.fixed_dictionaries({f.name: self._field(f, depth) for f in picked})
        ).map(build)

    def _field(self, field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        single = self._single(field, depth)
        if not field.is_repeated:
            return single
        return st.one_of(st.lists(single, max_size=3), single.map(lambda value: [value] * 101))

    def _single(self, field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        if field.message_type is not None:
            return self.message(field.message_type, depth + 1)
        if field.enum_type is not None:
            return st.one_of(st.sampled_from(list(field.enum_type.values_by_number)), st.integers(-3, 40))
        if field.type == FieldDescriptor.TYPE_STRING:
            return self._text
        if field.type == FieldDescriptor.TYPE_BYTES:
            return st.binary(max_size=64)
        if field.type == FieldDescriptor.TYPE_BOOL:
            return st.booleans()
        if field.type in (
            FieldDescriptor.TYPE_INT64,
            FieldDescriptor.TYPE_SINT64,
            FieldDescriptor.TYPE_SFIXED64,
        ):
            return _integer(*_INT64)
        if field.type in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
            return _integer(0, 2**64 - 1)
        if field.type in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
            return _integer(0, 2**32 - 1)
        if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            return st.floats(allow_nan=True)
        return _integer(*_INT32)
