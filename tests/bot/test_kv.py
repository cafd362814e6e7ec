"""The channels' small state (bot/store/kv.py) under concurrent use, on a real database."""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import Engine

from bot.channels import PREFIXES_A_QUERY, kv_items, kv_keys, kv_take
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


def test_keys_are_found_by_their_prefixes_exactly(db: Engine) -> None:
    keys = ["t:p:12:1", "t:p:12:2", "t:p:123:1", "t:p:13:1", "t:a:12:x", "t%p:12:1", "t_p:12:1", "T:p:12:1"]
    for key in keys:
        kv_put(db, key, {"key": key})
    assert sorted(kv_keys(db, "t:p:12:")) == ["t:p:12:1", "t:p:12:2"]  # not 123, nor the upper-case T
    found = kv_items(db, ["t:p:12:", "t:a:12:", "t%p:", "t_p:", "none:"])
    assert sorted(key for key, _, _ in found) == ["t%p:12:1", "t:a:12:x", "t:p:12:1", "t:p:12:2", "t_p:12:1"]
    assert all(value == {"key": key} for key, value, _ in found)
    assert sorted(kv_keys(db, "t")) == sorted(k for k in keys if k.startswith("t"))


def test_more_prefixes_than_one_query_takes_are_all_asked(db: Engine) -> None:
    prefixes = [f"telegram:pending:{chat}:" for chat in range(2 * PREFIXES_A_QUERY + 10)]
    for chat in (0, PREFIXES_A_QUERY, 2 * PREFIXES_A_QUERY + 9):
        kv_put(db, f"telegram:pending:{chat}:1", {"chat": chat})
    found = kv_items(db, prefixes)
    assert sorted(value["chat"] for _, value, _ in found) == [0, PREFIXES_A_QUERY, 2 * PREFIXES_A_QUERY + 9]


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
