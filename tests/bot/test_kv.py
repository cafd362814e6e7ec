"""The channels' small state (bot/store/kv.py) under concurrent use, on a real database."""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import Engine

from bot.channels import kv_take
from bot.store.clock import utcnow
from bot.store.kv import kv_delete, kv_get, kv_put

ROUNDS = 300


def test_a_put_replaces_and_a_take_removes(db: Engine) -> None:
    later = utcnow() + timedelta(minutes=5)
    kv_put(db, "k", {"n": 1})
    kv_put(db, "k", {"n": 2}, later)
    assert kv_get(db, "k") == ({"n": 2}, later)
    assert kv_take(db, "k") == ({"n": 2}, later)
    assert kv_get(db, "k") is None and kv_take(db, "k") is None
    kv_put(db, "k", {"n": 3})
    kv_delete(db, "k")
    kv_delete(db, "k")  # gone already: nothing to do
    assert kv_get(db, "k") is None


def test_a_put_while_another_process_takes_the_key_is_stored(db: Engine) -> None:
    # LINE's webhook notes a reply token while the deliverer takes the previous one: the put must not fail
    # because the row it replaces was deleted meanwhile (it did: StaleDataError, a 503 to LINE).
    errors: list[BaseException] = []

    def putter() -> None:
        try:
            for n in range(ROUNDS):
                kv_put(db, "line:reply:U1", {"token": str(n)})
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    def taker() -> None:
        for _ in range(ROUNDS):
            kv_take(db, "line:reply:U1")

    threads = [threading.Thread(target=putter), threading.Thread(target=taker)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    kv_put(db, "line:reply:U1", {"token": "last"})
    assert kv_get(db, "line:reply:U1") == ({"token": "last"}, None)
