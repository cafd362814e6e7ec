"""Small helpers for tests: bounded waiting for something that happens in the background."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal, TypeVar

T = TypeVar("T")


def wait_until(
    probe: Callable[[], T | Literal[False] | None], *, timeout: float = 15.0, interval: float = 0.05, what: str = "condition"
) -> T:
    """Call `probe` until it returns something truthy (so never None or False: the type says so); fail the
    test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last value: {value!r}")
        time.sleep(interval)
