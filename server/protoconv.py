"""Small proto conversions shared by the servicers."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import timestamp_pb2


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A Timestamp for an aware datetime; None stays None (the field is left unset)."""
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value.astimezone(UTC))
    return stamp


def from_timestamp(stamp: timestamp_pb2.Timestamp, present: bool) -> datetime | None:
    """The aware datetime of a Timestamp field, or None when the field was not set."""
    if not present:
        return None
    return stamp.ToDatetime(tzinfo=UTC)
