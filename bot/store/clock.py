"""The shell's clock: aware UTC, the way every time is stored."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)
