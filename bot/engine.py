"""The engine: stores inbound messages (inbox), runs the conversation, and commits its effects and replies.

One inbound message is processed in one transaction: the conversation's new state, the message log, the
case and its audit rows and the outbox rows commit together, or not at all. Messages of one conversation
are processed one at a time in arrival order, whatever the number of workers.

Group commit: a worker claims the oldest waiting message (the head) of up to `batch_size` chats at once and
processes them in one transaction, so that one commit (one fsync) serves them all. A chat has at most one
message in a batch, so its order holds; a batch that fails is rolled back and its messages are processed
again one by one, each in its own transaction, so that one bad message holds back only its own chat.

The hot path (accept, claim, load, log, queue, new chats, a new case's reference, units and audit rows)
runs on SQLAlchemy Core statements built once per engine, whose compiled forms SQLAlchemy caches, on the
session's connection; about six statements a message on SQLite, and on PostgreSQL, where each is a round
trip, two: the claim with the load, and the closing writes (tests/bot/test_group_commit.py). The ORM loads each
chat's rows (one query for the batch) and stays where nothing is hot: the case row itself, effects, the desk.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    CursorResult,
    Row,
    Select,
    and_,
    bindparam,
    func,
    insert,
    literal_column,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy import Engine as DbEngine
from sqlalchemy.engine import Dialect
from sqlalchemy.orm.attributes import flag_modified, set_committed_value
from sqlalchemy.sql.dml import Insert, ReturningInsert, ReturningUpdate
from sqlalchemy.sql.elements import ColumnElement, TextClause
from sqlmodel import Session, col

from bot import conversation as conv
from bot import fulfilment
from bot.batching import Batcher, Signal
from bot.fulfilment import Terms
from bot.language import detect, hint_language, hint_variant, preload
from bot.messages import Attachment, Button, DeskEvent, InboundMessage, OutboundMessage
from bot.outbox import enqueue, enqueue_event, to_payload
from bot.registry import lookup, near_serials
from bot.render import Renderer
from bot.report import AlertRule, alert_detail, check_batches
from bot.status import CaseStatus, move
from bot.store import (
    AuditEntry,
    Case,
    CaseUnit,
    ChannelIdentity,
    Conversation,
    Credit,
    Customer,
    Fulfilment,
    InboxItem,
    KeyValue,
    Message,
    OutboxItem,
    RegistryOrder,
    StoredAttachment,
    session_scope,
    table_of,
)
from bot.store.clock import utcnow
from bot.store.db import insert_for, is_transient, write_statement, write_transaction
from bot.store.models import INBOX_WAITING, literal_in
from bot.understanding import default_lexicon, fold, understand
from policy import Outcome, Policy, UnitFacts, claim_to_json, decision_to_json, normalize_serial

log = logging.getLogger(__name__)

PENDING, PARKED = "pending", "parked"
assert INBOX_WAITING == (PENDING, PARKED)  # the partial index ix_inbox_waiting holds these rows
STOPPED = (PARKED, "failed")  # waiting for an operator (`warranty-bot inbox list|retry`)


class StorageUnavailable(Exception):
    """The database failed in a way that can pass (connection lost, disk full, lock timeout, read-only)."""


def _error_text(error: BaseException) -> str:
    lines = str(error).splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:2000]


@dataclass(frozen=True, kw_only=True)
class Accepted:
    inbox_id: int | None
    duplicate: bool


@dataclass(kw_only=True)
class EngineConfig:
    case_ref_prefix: str = "WR"
    default_language: str = "en"
    max_text_chars: int = 4000
    max_claim_units: int = conv.MAX_CLAIM_UNITS
    attachment_max_mb: int = 10
    # What the channels can do (adapters.base.Channel; set by bot.server.configure_core):
    external_desks: tuple[str, ...] = ()  # outbox channels that take desk events, e.g. ("slack",)
    one_message_per_turn: frozenset[str] = frozenset()  # channels whose replies to one message go as one
    sends_files: frozenset[str] = frozenset()  # channels that deliver files; the others get a link to each
    public_url: str = ""  # where the server is reached from outside: the base of those links (PUBLIC_URL)
    max_attempts: int = 5  # a message that fails the same way this many times is parked
    retry_backoff_max_seconds: float = 60.0
    batch_alerts: AlertRule = field(
        default_factory=AlertRule
    )  # off unless a threshold is set (bot/report.py)
    fulfilment: Terms = field(
        default_factory=Terms
    )  # return address, RMA prefix, reminders (bot/fulfilment.py)
    batch_size: int = 32  # chats whose head message one transaction processes (group commit)
    # SQLite: the time a batch may hold the one write lock (the webhooks' inserts wait for it); its size follows.
    batch_seconds: float = 0.025


@dataclass
class Engine:
    db: DbEngine
    policy: Policy
    renderer: Renderer
    config: EngineConfig = field(default_factory=EngineConfig)
    # Set when new rows wait: the inbox worker and the deliverer wake on it instead of polling.
    inbox_signal: threading.Event = field(default_factory=Signal)
    outbox_signal: threading.Event = field(default_factory=Signal)
    _statements: _Statements = field(default_factory=lambda: _Statements(), init=False, repr=False)
    _batch: int = field(default=0, init=False, repr=False)  # the current batch size (see _process_pending)
    # An option value -> its label in every language, folded (see _typed_labels).
    _label_forms: dict[str, tuple[str, ...]] = field(default_factory=dict, init=False, repr=False)
    _accepts: Batcher[InboundMessage, Accepted] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._batch = self.config.batch_size
        self._accepts = Batcher(self.accept_each, name="inbox-accept")

    def warm_up(self, *, templates: bool = True) -> None:
        """Load what the first customer message would otherwise wait for: the language detector's models and
        the lexicon (once per process), and every template compiled (once per renderer; `templates=False`
        leaves those to compile on first use)."""
        preload()
        default_lexicon()
        self._warm_statements()
        if templates:
            self.renderer.preload()

    def _warm_statements(self) -> None:
        """Compile the claim and the batch's load into SQLAlchemy's cache (they change nothing: a batch of
        none, chats that do not exist; rolled back all the same)."""
        with Session(self.db) as session:
            self._claim(session, 0, None)
            session.execute(self._statements.contexts, {"keys": [("", "")]})
            session.rollback()

    # --- inbox ------------------------------------------------------------------------------------------

    def accept(self, message: InboundMessage) -> Accepted:
        """Store an inbound message durably; a redelivery (same channel and external id) is recognised."""
        return self.accept_many([message])[0]

    def accept_many(self, messages: Sequence[InboundMessage]) -> list[Accepted]:
        """Store inbound messages durably in one transaction (one commit, one fsync, for all of them), in
        order; each redelivery (same channel and external id, in the inbox or earlier in `messages`) is
        recognised. All or nothing: a failure stores none of them."""
        rows = [_inbox_row(message) for message in messages]
        if not rows:
            return []
        # Core on a connection of its own: nothing of the ORM's unit of work is needed here. One statement
        # (one page of insertmanyvalues) needs no transaction around it on PostgreSQL (write_statement).
        one = len(rows) <= self.db.dialect.insertmanyvalues_page_size
        with (
            self.db.connect() as connection,
            (write_statement if one else write_transaction)(connection) as writer,
        ):
            statement = self._statements.accept(self.db.dialect.name)
            stored = {(row[1], row[2]): int(row[0]) for row in writer.execute(statement, rows)}
        accepted = []
        for row in rows:
            # A message twice in one batch (a redelivery that came with the original): the first one is stored.
            inbox_id = stored.pop((row["channel"], row["external_id"]), None)
            accepted.append(Accepted(inbox_id=inbox_id, duplicate=inbox_id is None))
        if any(not a.duplicate for a in accepted):
            self.inbox_signal.set()
        return accepted

    async def accept_soon(self, message: InboundMessage) -> Accepted:
        """`accept` for code on an event loop (every channel's webhook, the web chat, the API): the messages
        that arrive while an accept's transaction is under way are stored together in the next one (group
        commit, bot/batching.py): concurrent webhooks share one commit (one fsync, one turn of SQLite's write
        lock). Raises what `accept` raises, once the message's own transaction failed."""
        return await self._accepts.submit(message)

    def accept_each(self, messages: list[InboundMessage]) -> list[Accepted | Exception]:
        """`accept_many`, with each message's own outcome: a batch that fails for its messages' sake (not
        the database's) is stored again one message at a time, so that one bad message fails only itself."""
        try:
            return list(self.accept_many(messages))
        except Exception as error:
            if len(messages) == 1 or is_transient(error):
                return [error] * len(messages)  # the database: every message of the batch fails alike
        outcomes: list[Accepted | Exception] = []
        for message in messages:
            try:
                outcomes.append(self.accept(message))
            except Exception as error:
                outcomes.append(error)
        return outcomes

    def seen(self, channel: str, external_id: str) -> bool:
        """Whether this message is in the inbox already (adapters skip downloading a redelivery's files)."""
        with Session(self.db) as session:
            found = session.execute(
                select(col(InboxItem.id)).where(
                    col(InboxItem.channel) == channel, col(InboxItem.external_id) == external_id[:255]
                )
            ).first()
        return found is not None

    def process_pending(self, limit: int = 1000) -> int:
        """Process pending inbox rows, oldest first; returns how many were processed (or parked).

        Raises `StorageUnavailable` when the database fails in a way that can pass: the message stays
        pending, and the caller tries again after a pause (`Engine.retry_delay`).
        """
        try:
            return self._process_pending(limit)
        except StorageUnavailable:
            raise
        except Exception as error:
            if is_transient(error):
                raise StorageUnavailable(_error_text(error)) from error
            raise

    def _process_pending(self, limit: int) -> int:
        done = 0
        sqlite = self.db.dialect.name == "sqlite"
        while done < limit:
            # On SQLite a batch holds the one write lock while it runs, and the webhooks' inbox inserts (their
            # 2xx) wait for it: its size follows the time a message took, so that a batch takes about
            # `batch_seconds`, up to the bound. On PostgreSQL a batch holds only its own chats' rows.
            size = min(self._batch, limit - done)
            started = time.monotonic()
            claimed, more = self._process_batch(size)
            elapsed = time.monotonic() - started
            if sqlite and claimed:
                fits = int(claimed * self.config.batch_seconds / max(elapsed, 1e-6))
                self._batch = max(1, min(self.config.batch_size, fits, 2 * self._batch))
            elif claimed == size:
                self._batch = min(self.config.batch_size, self._batch * 2)
            done += claimed
            if not more:
                break  # nothing waiting, or only chats held by a parked message or a pause
        return done

    def _process_batch(self, size: int, item_id: int | None = None) -> tuple[int, bool]:
        """Claim the heads of up to `size` chats (or the one message `item_id`, if it is still a head) and
        process them in one transaction; returns how many were claimed and whether more may be waiting.

        A head that waits out a pause after a failure, or is parked, is not claimed (a parked message holds
        its chat's later messages back, so that a re-drive keeps their order). On PostgreSQL heads that
        another worker holds are skipped (`FOR UPDATE SKIP LOCKED`); on SQLite one writer at a time.
        """
        claimed: Sequence[Row[Any]] = ()
        try:
            with session_scope(self.db) as session:
                claimed, contexts = self._claim(session, size, item_id)
                if claimed:
                    self._process_many(session, claimed, contexts)
        except Exception as error:
            if is_transient(error):
                # The database (or its disk) failed, not these messages: they stay pending, in their place.
                log.warning("inbox messages not processed yet: %s", _error_text(error))
                raise StorageUnavailable(_error_text(error)) from error
            if not claimed:
                raise
            if len(claimed) > 1:
                # One bad message must not hold the others back: each again, in a transaction of its own.
                for row in sorted(claimed, key=lambda r: int(r.id)):
                    self._process_batch(1, int(row.id))
            else:
                log.exception(
                    "inbox message %s of %s could not be processed", claimed[0].id, claimed[0].channel
                )
                self._record_failure(int(claimed[0].id), error)  # a transient failure here: pause and retry
        if not claimed:
            return 0, False
        self.outbox_signal.set()
        last = max(claimed, key=lambda r: int(r.id))
        return len(claimed), bool(last.after) or any(row.more for row in claimed)

    def _claim(
        self, session: Session, size: int, item_id: int | None
    ) -> tuple[Sequence[Row[Any]], _Contexts | None]:
        """The claimed heads, and on PostgreSQL their chats' contexts (see `_contexts`) with them, in one
        statement (the claim as a data-modifying CTE, a round trip fewer); on SQLite those are read after."""
        dialect = session.get_bind().dialect.name
        params: dict[str, Any] = {"now": utcnow(), "batch": size}
        if item_id is not None:
            params["item_id"] = item_id
        if dialect != "postgresql":
            claim = self._statements.claim(dialect, one=item_id is not None)
            return session.connection().execute(claim, params).all(), None
        rows = session.execute(self._statements.claim_contexts(one=item_id is not None), params).all()
        contexts: _Contexts = {}
        for row in rows:
            *_, identity, customer, conversation, _case = row  # the case: loaded into the session only
            if identity is not None:
                contexts[row.channel, row.chat_id] = (identity, customer, conversation)
        return rows, contexts

    def _process_many(
        self, session: Session, claimed: Sequence[Row[Any]], contexts: _Contexts | None
    ) -> None:
        messages = [inbound_from_payload(row.payload) for row in sorted(claimed, key=lambda r: int(r.id))]
        if contexts is None:
            contexts = self._contexts(session, messages)
        self._start_chats(session, messages, contexts)
        hot = _Hot()
        # Every serial the batch's messages mention or their conversations hold, in one registry query.
        for message in messages:
            context = contexts.get((message.channel, message.chat_id))
            known = context[2] if context is not None else None
            if known is not None:
                hot.looked_up.update(conv.State.from_dict({**known.data, "name": known.state}).serials)
            text = message.text[: self.config.max_text_chars]
            hot.mentioned[text] = self._serials_in(text)
            hot.looked_up.update(hot.mentioned[text])
        hot.looked_up = {normalize_serial(s) for s in hot.looked_up} - {""}
        hot.registry = lookup(session, hot.looked_up) if hot.looked_up else {}
        session.info[_HOT] = hot
        # Nothing is flushed behind the engine's back: the batch's rows go out together at its end.
        with session.no_autoflush:
            for message in messages:
                self._process(session, message, contexts[message.channel, message.chat_id])
            hot.write(session, self._statements)
            session.flush()
        del session.info[_HOT]

    def _contexts(self, session: Session, messages: list[InboundMessage]) -> _Contexts:
        """Each chat's identity, customer, conversation and open case, in one query for the whole batch."""
        rows = session.execute(
            self._statements.contexts, {"keys": [(m.channel, m.chat_id) for m in messages]}
        ).all()
        return {(row[0].channel, row[0].chat_id): (row[0], row[1], row[2]) for row in rows}

    def _start_chats(
        self,
        session: Session,
        messages: list[InboundMessage],
        contexts: _Contexts,
    ) -> None:
        """The batch's new chats: a customer each (in the language the channel hints, a written variant such
        as pt-PT when it names one), their identities and conversations, added to `contexts`. Written with
        Core, a statement a table for the batch, then read back with the batch's contexts query (the ORM's
        objects, without its unit of work)."""
        new = [m for m in messages if (m.channel, m.chat_id) not in contexts]
        if not new:
            return
        connection, statements, now = session.connection(), self._statements, utcnow()
        customers = connection.execute(
            statements.new_customers,
            [
                {
                    "name": m.sender_name,
                    "language": hint_variant(m.locale_hint) or hint_language(m.locale_hint),
                    "language_explicit": False,
                    "created_at": now,
                }
                for m in new
            ],
        ).all()
        customer_ids = [int(row.id) for row in customers]
        connection.execute(
            statements.new_identities,
            [
                {
                    "customer_id": customer_id,
                    "channel": m.channel,
                    "chat_id": m.chat_id,
                    "sender_id": m.sender_id,
                    "display_name": m.sender_name,
                    "unreachable": False,
                    "last_inbound_at": None,
                    "data": {},
                }
                for m, customer_id in zip(new, customer_ids, strict=True)
            ],
        )
        # A conversation may outlive its identity (rows removed by hand): it goes on, as it is.
        connection.execute(
            statements.new_conversations(connection.dialect.name),
            [
                {
                    "customer_id": customer_id,
                    "channel": m.channel,
                    "chat_id": m.chat_id,
                    "state": "new",
                    "data": {},
                    "case_id": None,
                    "updated_at": now,
                }
                for m, customer_id in zip(new, customer_ids, strict=True)
            ],
        )
        contexts.update(self._contexts(session, new))

    def _record_failure(self, item_id: int, error: Exception) -> None:
        """Count a failure of the very row that failed; the same failure `max_attempts` times parks it."""
        text = _error_text(error)
        with session_scope(self.db) as session:
            item = session.get(InboxItem, item_id)
            if item is None or item.status != PENDING:
                return
            same = (item.error or "").split(":", 1)[0] == type(error).__name__
            item.attempts = item.attempts + 1 if same else 1
            item.error = text
            if item.attempts >= self.config.max_attempts:
                item.status = PARKED
                item.processed_at = utcnow()
                log.warning(
                    "inbox message %s of %s parked after %s failures", item_id, item.channel, item.attempts
                )
            else:
                item.next_attempt_at = utcnow() + timedelta(seconds=self.retry_delay(item.attempts))

    def retry_delay(self, failures: int) -> float:
        """The pause after `failures` failures in a row: doubling from a tenth of a second, capped."""
        return float(min(self.config.retry_backoff_max_seconds, 0.1 * 2 ** max(0, failures - 1)))

    # --- one message --------------------------------------------------------------------------------------

    def _process(
        self,
        session: Session,
        message: InboundMessage,
        context: tuple[ChannelIdentity, Customer, Conversation | None],
    ) -> None:
        conversation, identity, customer = self._conversation(session, message, context)
        case = session.get(Case, conversation.case_id) if conversation.case_id else None

        stored = [
            self.store_attachment(session, conversation, case, a)
            for a in message.attachments
            if a.kind != "rejected"
        ]
        rejected = [a for a in message.attachments if a.kind == "rejected"]
        state = conv.State.from_dict({**conversation.data, "name": conversation.state})
        session.info[_HOT].log(
            conversation_id=conversation.id or 0,
            case_id=case.id if case else None,
            author="customer",
            author_name=message.sender_name,
            text=self._as_read(message.text, state),
            attachment_ids=[a.id or 0 for a in stored],
            client_id=message.raw.get("client_id") if message.raw else None,
        )

        text = message.text[: self.config.max_text_chars]
        if message.raw and message.raw.get("quiet"):
            # A message to show the engineers without answering it (mail from a list, or asking for no
            # automatic answer): it goes to the case, or opens one, and the conversation waits for a person.
            self._take_quietly(session, message, text, stored, conversation, customer, case, state)
            flag_modified(identity, "unreachable")  # not settled: the ORM's flush writes it
            return
        detected = None if customer.language_explicit else detect(text)
        if customer.language is None and detected is not None:
            # The first clear message tells the language of a customer whose channel gave no hint.
            customer.language, detected = detected, None
        if not conversation.data.get("language"):
            state = replace(state, language=customer.language or self.config.default_language)
        facts = self._facts(session, state, text, case, detected, conversation)
        event = conv.Event(
            text=text,
            attachment_ids=tuple(a.id or 0 for a in stored),
            rejected=tuple((a.name, a.ref) for a in rejected),  # a rejected file's ref is the reason
        )
        transition = conv.step(state, event, facts)

        case = self._apply(session, transition, conversation, customer, case, message)
        # A case opened by this step gives its reference to the replies; a reply's own one stays.
        replies = [
            (reply, {"case_ref": reply.params.get("case_ref") or (case.ref if case else None)})
            for reply in transition.replies
        ]

        opened = [e for e in transition.effects if isinstance(e, conv.OpenCase)]
        if case is not None and opened:
            # The customer's orders looked up: a discount credited on an earlier case waits for this order.
            waiting = self._credits_waiting(session, case, [u.order_id for u in opened[-1].units])
            if waiting:
                told = conv.Reply(
                    template=fulfilment.TEMPLATE, params={"step": "credit_available", "credits": waiting}
                )
                replies.append((told, {"case_ref": case.ref}))

        language = transition.state.language
        rendered = [self.renderer.render(r, language=r.language or language, extra=c) for r, c in replies]
        if rendered and conversation.channel in self.config.one_message_per_turn:
            # One mail (or one of WeChat's five messages) per customer message, not one per sentence.
            text = "\n\n".join(r.text for r in rendered)
            self.say(session, conversation, text, tuple(b for r in rendered for b in r.buttons), case=case)
        else:
            for reply in rendered:
                self.say(session, conversation, reply.text, reply.buttons, case=case)

        session.info[_HOT].settle(
            conversation,
            identity,
            state=transition.state.name,
            data=transition.state.to_dict(),
            updated_at=utcnow(),
            last_inbound_at=message.received_at,
        )
        relayed = [e.text for e in transition.effects if isinstance(e, conv.RelayToCase) and not e.reopen]
        if case is not None and relayed and relayed[0]:
            self._fulfil_from_customer(session, case, conversation, relayed[0])

    def _take_quietly(
        self,
        session: Session,
        message: InboundMessage,
        text: str,
        stored: list[StoredAttachment],
        conversation: Conversation,
        customer: Customer,
        case: Case | None,
        state: conv.State,
    ) -> None:
        ids = tuple(a.id or 0 for a in stored)
        if case is None:
            effect = conv.OpenCase(
                units=(),
                fault=text,
                claim_date=utcnow().date(),
                prefers_discount=False,
                attachment_ids=ids,
                human_requested=True,
            )
            case = self._open_case(session, effect, conversation, customer, state.language)
        else:
            self._relay(session, case, conv.RelayToCase(text=text, attachment_ids=ids), message)
        audit(session, case, "bot", "taken_without_answer", reason=str(message.raw.get("quiet"))[:200])
        state = replace(state, name="with_engineer", offered=())
        conversation.state = state.name
        conversation.data = state.to_dict()
        conversation.updated_at = utcnow()

    def _facts(
        self,
        session: Session,
        state: conv.State,
        text: str,
        case: Case | None,
        detected: str | None,
        conversation: Conversation,
    ) -> conv.Facts:
        hot = session.info.get(_HOT)
        mentioned = (
            hot.mentioned[text] if hot is not None and text in hot.mentioned else self._serials_in(text)
        )
        wanted = {normalize_serial(s) for s in (*state.serials, *mentioned)} - {""}
        if hot is not None and wanted <= hot.looked_up:  # the batch looked them up together
            registry = {s: hot.registry[s] for s in wanted if s in hot.registry}
        else:
            registry = lookup(session, wanted)
        unknown = [s for s in mentioned if s not in registry]
        last_case = None
        if case is None and state.name == "closed":
            last_case = session.execute(
                select(col(Case.ref))
                .where(col(Case.conversation_id) == conversation.id)
                .order_by(col(Case.id).desc())
                .limit(1)
            ).scalar_one_or_none()
        return conv.Facts(
            today=utcnow().date(),
            policy=self.policy,
            registry=registry,
            case_ref=case.ref if case else None,
            case_status=case.status if case else None,
            detected_language=detected if detected != conv.base_language(state.language) else None,
            labels=self._labels(state.offered),
            suggestions=near_serials(session, unknown[:20]) if unknown else {},
            max_units=self.config.max_claim_units,
            last_case_ref=last_case,
            attachment_max_mb=self.config.attachment_max_mb,
        )

    def _serials_in(self, text: str) -> tuple[str, ...]:
        return tuple(understand(text, default_lexicon(), self.policy).serials)

    def _labels(self, offered: tuple[str, ...]) -> dict[str, str]:
        """The offered buttons' labels in every language, folded, as a customer may type one back."""
        labels: dict[str, str] = {}
        for value in offered:
            for typed in self._typed_labels(value):
                labels[typed] = value
        return labels

    def _typed_labels(self, value: str) -> tuple[str, ...]:
        """An option's label in every language, folded: made once per option (the labels are the templates')."""
        typed = self._label_forms.get(value)
        if typed is None:
            name = conv.label_name(value)
            typed = (
                tuple(
                    fold(self.renderer.label(name, language=language)).strip(" .!¡¿?")
                    for language in conv.LANGUAGES
                )
                if name is not None
                else ()
            )
            if (
                name is not None
            ):  # a value without a label (a visit slot) is not kept: there is no end to them
                self._label_forms[value] = typed
        return typed

    def _as_read(self, text: str, state: conv.State) -> str:
        """What a person reads of a customer's message: a button's label (or an option number with its label),
        never the option's value (`cause:normal`)."""
        value = text.strip()
        if value.isascii() and value.isdigit() and state.offered and 1 <= int(value) <= len(state.offered):
            label = self._label_of(state.offered[int(value) - 1], state.language)
            return f"{value} ({label})" if label else text
        return self._label_of(value, state.language) or text

    def _label_of(self, value: str, language: str) -> str | None:
        name = conv.label_name(value)
        return self.renderer.label(name, language=language) if name else None

    def _conversation(
        self,
        session: Session,
        message: InboundMessage,
        context: tuple[ChannelIdentity, Customer, Conversation | None],
    ) -> tuple[Conversation, ChannelIdentity, Customer]:
        identity, customer, known = context
        # They wrote to us: reachable again (written with the batch's identities, see _Hot.settle).
        set_committed_value(identity, "unreachable", False)
        if known is not None:
            return known, identity, customer
        started = Conversation(customer_id=customer.id or 0, channel=message.channel, chat_id=message.chat_id)
        session.add(started)
        session.flush()
        return started, identity, customer

    def store_attachment(
        self, session: Session, conversation: Conversation, case: Case | None, attachment: Attachment
    ) -> StoredAttachment:
        row = StoredAttachment(
            conversation_id=conversation.id,
            case_id=case.id if case else None,
            kind=attachment.kind,
            name=attachment.name,
            mime=attachment.mime,
            size=attachment.size,
            path=attachment.ref,
            sha256=attachment.ref.split("/")[-1][:64],
        )
        session.add(row)
        session.flush()
        return row

    # --- effects --------------------------------------------------------------------------------------------

    def _apply(
        self,
        session: Session,
        transition: conv.Transition,
        conversation: Conversation,
        customer: Customer,
        case: Case | None,
        message: InboundMessage,
    ) -> Case | None:
        for effect in transition.effects:
            if isinstance(effect, conv.OpenCase):
                case = self._open_case(session, effect, conversation, customer, transition.state.language)
            elif isinstance(effect, conv.RelayToCase) and effect.reopen and case is None:
                case = self._reopen(session, conversation)
                if case is not None:
                    self._relay(session, case, effect, message)
            elif isinstance(effect, conv.RelayToCase) and case is not None:
                self._relay(session, case, effect, message)
            elif isinstance(effect, conv.RecordRating):
                rated = session.execute(
                    select(Case)
                    .where(col(Case.conversation_id) == conversation.id)
                    .order_by(col(Case.id).desc())
                    .limit(1)
                ).scalar_one_or_none()
                if rated is not None:
                    rated.rating = effect.rating
                    audit(session, rated, "customer", "rated", rating=effect.rating)
                    self.notify_desks(session, rated, "case_updated")
            elif isinstance(effect, conv.SetLanguage):
                customer.language = effect.language
                customer.language_explicit = True
                if case is not None:
                    case.language = effect.language
            elif isinstance(effect, conv.LeaveCase) and case is not None and conversation.case_id == case.id:
                # The customer restarted: the case stays with the engineers, the conversation is free again.
                conversation.case_id = None
                case = None
        return case

    def _open_case(
        self,
        session: Session,
        effect: conv.OpenCase,
        conversation: Conversation,
        customer: Customer,
        language: str,
    ) -> Case:
        case = Case(
            customer_id=customer.id or 0,
            conversation_id=conversation.id or 0,
            channel=conversation.channel,
            language=language,
            fault=effect.fault,
            claim_date=effect.claim_date,
            prefers_discount=effect.prefers_discount,
        )
        # A claim the policy refuses for every unit is still a person's to confirm (docs/policy.md): its own status.
        if effect.units and all(u.decision.outcome is Outcome.not_covered for u in effect.units):
            move(case, CaseStatus.to_confirm)
        session.add(case)
        session.flush()  # its id, for its reference and its rows (Core: the ORM has nothing more to do)
        connection = session.connection()
        ref = f"{self.config.case_ref_prefix}-{case.created_at.year}-{case.id:06d}"
        connection.execute(self._statements.case_ref, {"b_id": case.id, "b_ref": ref})
        set_committed_value(case, "ref", ref)
        units = []
        for unit in effect.units:
            d = unit.decision
            decision = decision_to_json(d, self.policy)
            if unit.claim is not None:
                decision["claim"] = claim_to_json(unit.claim)  # the facts, for an engineer's correction
            units.append(
                {
                    "case_id": case.id,
                    "serial": unit.serial,
                    "model": unit.model,
                    "order_id": unit.order_id,
                    "production_date": unit.production_date,
                    "port_arrival_date": unit.port_arrival_date,
                    "warranty_end": d.warranty_end,
                    "outcome": d.outcome.value,
                    "basis": d.basis.value if d.basis else None,
                    "clauses": list(d.clauses),
                    "decision": decision,
                }
            )
        if units:
            connection.execute(self._statements.units, units)
        for attachment_id in effect.attachment_ids:
            stored = session.get(StoredAttachment, attachment_id)
            if stored is not None:
                stored.case_id = case.id
        # Everything said so far belongs to the case's history: what is logged, and what this batch logs.
        # (Core: the engine's batch holds no Message objects for the ORM to keep in step.)
        session.connection().execute(
            self._statements.link_log, {"b_case": case.id, "b_conversation": conversation.id}
        )
        hot = session.info.get(_HOT)
        if hot is not None:
            hot.link_case(conversation.id or 0, case.id or 0)
        conversation.case_id = case.id
        audit(
            session,
            case,
            "bot",
            "opened",
            units=len(effect.units),
            human_requested=effect.human_requested,
            status=case.status,
        )
        self.notify_desks(session, case, "case_opened")
        self._alert_batches(session, case, effect)
        return case

    def _alert_batches(self, session: Session, case: Case, effect: conv.OpenCase) -> None:
        """A claim that takes its production batch past the alert rule tells the engineers, once per window."""
        batches = [(u.model, u.production_date) for u in effect.units if u.model and u.production_date]
        if not batches or not self.config.batch_alerts.enabled:
            return
        for alert in check_batches(
            session, self.policy, self.config.batch_alerts, batches, case_ref=case.ref, now=utcnow()
        ):
            detail = alert_detail(alert)
            audit(session, case, "bot", "batch_alert", **detail)
            self.notify_desks(session, case, "batch_alert", **detail)

    def _reopen(self, session: Session, conversation: Conversation) -> Case | None:
        """A follow-up after a closed case: the case opens again, for the engineers to see it."""
        case: Case | None = session.execute(
            select(Case)
            .where(col(Case.conversation_id) == conversation.id)
            .order_by(col(Case.id).desc())
            .limit(1)
        ).scalar_one_or_none()
        if case is None:
            return None
        if case.status in (CaseStatus.resolved, CaseStatus.closed):
            move(case, CaseStatus.open)
            case.updated_at = utcnow()
            audit(session, case, "customer", "reopened")
            self.notify_desks(session, case, "case_updated")
        # The follow-up, and what was said since the case let the conversation go, is the case's history.
        said = select(func.max(col(Message.id))).where(col(Message.case_id) == case.id).scalar_subquery()
        for logged in session.execute(
            select(Message).where(
                col(Message.conversation_id) == conversation.id,
                col(Message.case_id).is_(None),
                col(Message.id) > func.coalesce(said, 0),
            )
        ).scalars():
            logged.case_id = case.id
        hot = session.info.get(_HOT)
        if hot is not None:  # the follow-up itself, logged by this batch and not written yet
            hot.link_case(conversation.id or 0, case.id or 0)
        conversation.case_id = case.id
        return case

    def _relay(self, session: Session, case: Case, effect: conv.RelayToCase, message: InboundMessage) -> None:
        case.updated_at = utcnow()  # the desk lists by activity and shows the customer's message as unread
        if case.status == CaseStatus.waiting_customer:
            move(case, CaseStatus.claimed)
            audit(session, case, "customer", "answered")
        for attachment_id in effect.attachment_ids:
            stored = session.get(StoredAttachment, attachment_id)
            if stored is not None:
                stored.case_id = case.id
        self.notify_desks(
            session,
            case,
            "customer_message",
            text=self._label_of(effect.text, case.language or "en") or effect.text,
            attachment_ids=list(effect.attachment_ids),
            sender=message.sender_name,
        )

    # --- reading, for channels that show the conversation themselves (web chat) -------------------------

    def transcript(
        self, channel: str, chat_id: str, *, after: int = 0, limit: int = 200
    ) -> list[dict[str, Any]]:
        """What the customer sees of their conversation: their messages, the bot's and engineers' (no notes)."""
        with Session(self.db) as session:
            conversation = session.execute(
                select(Conversation).where(
                    col(Conversation.channel) == channel,
                    col(Conversation.chat_id) == chat_id,
                )
            ).scalar_one_or_none()
            if conversation is None:
                return []
            rows = (
                session.execute(
                    select(Message)
                    .where(
                        col(Message.conversation_id) == conversation.id,
                        col(Message.id) > after,
                        col(Message.author).in_(("customer", "bot", "engineer")),
                    )
                    .order_by(col(Message.id))
                    .limit(limit)
                )
                .scalars()
                .all()
            )
            ids = [a for m in rows for a in m.attachment_ids]
            files = (
                {
                    f.id: {"id": f.id, "name": f.name, "mime": f.mime}
                    for f in session.execute(
                        select(StoredAttachment).where(col(StoredAttachment.id).in_(ids))
                    ).scalars()
                }
                if ids
                else {}
            )
            return [
                {
                    "id": m.id,
                    "author": m.author,
                    "author_name": m.author_name if m.author == "engineer" else None,
                    "text": m.text,
                    "buttons": m.buttons,
                    "attachments": [files[a] for a in m.attachment_ids if a in files],
                    "client_id": m.client_id,
                    "created_at": m.created_at.isoformat(),
                }
                for m in rows
            ]

    def can_send_files(self, channel: str) -> bool:
        """Whether files reach a customer on `channel`: as files, or as links (which need PUBLIC_URL)."""
        return channel in self.config.sends_files or bool(self.config.public_url)

    def _file_links(self, session: Session, attachments: Sequence[StoredAttachment]) -> list[str]:
        """A line "📎 name: link" per file, each link with its own unguessable token (kept in KeyValue)."""
        lines = []
        for a in attachments:
            token = secrets.token_urlsafe(24)
            session.add(KeyValue(key=FILE_LINK_PREFIX + token, value={"attachment_id": a.id}))
            lines.append(f"📎 {a.name}: {self.config.public_url.rstrip('/')}/files/{token}")
        return lines

    def linked_file(self, token: str) -> StoredAttachment | None:
        """The file a customer's link (see _file_links) points at."""
        if not _TOKEN.fullmatch(token):
            return None
        with Session(self.db) as session:
            row = session.get(KeyValue, FILE_LINK_PREFIX + token)
            return session.get(StoredAttachment, row.value.get("attachment_id")) if row is not None else None

    def conversation_file(self, channel: str, chat_id: str, attachment_id: int) -> StoredAttachment | None:
        """A file of this conversation (the customer's or one an engineer sent them), for its own channel."""
        with Session(self.db) as session:
            return session.execute(
                select(StoredAttachment)
                .join(Conversation, col(Conversation.id) == col(StoredAttachment.conversation_id))
                .where(
                    col(StoredAttachment.id) == attachment_id,
                    col(Conversation.channel) == channel,
                    col(Conversation.chat_id) == chat_id,
                )
            ).scalar_one_or_none()

    # --- shared with the desk ------------------------------------------------------------------------------

    def say(
        self,
        session: Session,
        conversation: Conversation,
        text: str,
        buttons: tuple[Button, ...] = (),
        *,
        case: Case | None = None,
        author: str = "bot",
        author_name: str | None = None,
        attachments: Sequence[StoredAttachment] = (),
    ) -> None:
        """Log a message to the customer and queue it for their channel, in the caller's transaction;
        `attachments` (stored files, on the case) go with it: as files where the channel sends them."""
        files = tuple(
            Attachment(kind=a.kind, name=a.name, mime=a.mime, size=a.size, ref=a.path) for a in attachments
        )
        file_ids = [a.id or 0 for a in attachments]
        if files and conversation.channel not in self.config.sends_files:
            text = "\n".join([text, *self._file_links(session, attachments)])
        hot = session.info.get(_HOT)
        if hot is not None:  # the engine's own batch: the rows go out together at its end
            hot.log(
                conversation_id=conversation.id or 0,
                case_id=case.id if case else None,
                author=author,
                author_name=author_name,
                text=text,
                buttons=[asdict(b) for b in buttons],
                attachment_ids=file_ids,
            )
            # The batch loaded the customer and the open case: these reads are the session's, not the database's.
            customer = session.get(Customer, conversation.customer_id)
            if case is None and conversation.case_id is not None:
                case = session.get(Case, conversation.case_id)
            ref = case.ref if case else None
            if ref is None and conversation.state == "closed":
                ref = _case_ref(session, conversation)  # a closed case's last words still belong to it
            hot.queue(
                OutboundMessage(
                    channel=conversation.channel,
                    chat_id=conversation.chat_id,
                    text=text,
                    buttons=buttons,
                    language=customer.language if customer else None,
                    case_ref=ref,
                    author=author,
                    attachments=files,
                ),
                author=author,
            )
            return
        session.add(
            Message(
                conversation_id=conversation.id or 0,
                case_id=case.id if case else None,
                author=author,
                author_name=author_name,
                text=text,
                buttons=[asdict(b) for b in buttons],
                attachment_ids=file_ids,
            )
        )
        customer = session.get(Customer, conversation.customer_id)
        enqueue(
            session,
            OutboundMessage(
                channel=conversation.channel,
                chat_id=conversation.chat_id,
                text=text,
                buttons=buttons,
                attachments=files,
                language=customer.language if customer else None,
                case_ref=case.ref if case else _case_ref(session, conversation),
                author=author,  # an engineer's words are no auto-reply (email's Auto-Submitted)
            ),
        )

    # --- fulfilment (bot/fulfilment.py): the steps after the chosen method --------------------------------

    def _fulfil_from_customer(
        self, session: Session, case: Case, conversation: Conversation, text: str
    ) -> None:
        """A customer's message that moves the fulfilment on: a tracking number, a visit slot, "fixed"."""
        row = session.execute(
            select(Fulfilment).where(col(Fulfilment.case_id) == case.id)
        ).scalar_one_or_none()
        if row is None or case.status == CaseStatus.closed:
            return
        answer = understand(text, default_lexicon(), self.policy).answer
        change = fulfilment.customer_message(fulfilment_record(row), text, answer=answer)
        if change is not None:
            self.apply_fulfilment(session, case, row, change, actor="customer", origin=case.channel)

    def _credits_waiting(
        self, session: Session, case: Case, order_ids: Sequence[str | None]
    ) -> list[dict[str, Any]]:
        """Discount credits (M5) of earlier cases for the companies of this case's orders (`order_ids`, its
        units'), or this customer."""
        credits = session.connection().execute(
            self._statements.credits_waiting,
            {
                "case_id": case.id,
                "customer_id": case.customer_id,
                "order_ids": sorted({o for o in order_ids if o}),
            },
        )
        return [{"order_id": c.order_id, "amount": c.amount, "currency": c.currency} for c in credits]

    def apply_fulfilment(
        self,
        session: Session,
        case: Case,
        row: Fulfilment,
        change: fulfilment.Change,
        *,
        actor: str,
        origin: str,
        files: Sequence[StoredAttachment] = (),
    ) -> None:
        """Apply a fulfilment change in the caller's transaction: the record, the audit row, the customer's
        messages (in their language), the buttons they may answer with; a final step closes the case.
        `files` (stored on the case) go with the change's first message and are named in its audit row."""
        now = utcnow()
        if change.record.step.value != row.step:
            row.step_since = now
        row.step = change.record.step.value
        row.data = dict(change.record.data)
        row.updated_at = now
        case.updated_at = now
        if change.action:
            listed = [{"id": f.id, "name": f.name, "mime": f.mime, "size": f.size} for f in files]
            extra = {"files": listed} if listed else {}
            audit(
                session,
                case,
                actor,
                "fulfilment",
                origin=origin,
                task=change.action,
                **change.detail,
                **extra,
            )
        conversation = session.get(Conversation, case.conversation_id)
        if conversation is not None:
            for number, reply in enumerate(change.replies):
                rendered = self.renderer.render(reply, language=case.language, extra={"case_ref": case.ref})
                sent = files if number == 0 else ()
                self.say(session, conversation, rendered.text, rendered.buttons, case=case, attachments=sent)
            if change.offered is not None and conversation.case_id == case.id:
                conversation.data = {**conversation.data, "offered": list(change.offered)}
        self.outbox_signal.set()
        if change.action:
            self.notify_desks(
                session,
                case,
                "case_updated",
                action="fulfilment",
                actor=actor,
                origin=origin,
                task=change.action,
                **change.detail,
            )
        if change.closes:
            self.close_case(session, case, actor, origin=origin)

    def close_case(self, session: Session, case: Case, actor: str, *, origin: str) -> None:
        """Close a case: the customer is told and asked for a rating (unless asked already), the chat is free."""
        if case.status == CaseStatus.closed:
            return
        ask_rating = case.status != CaseStatus.resolved  # a resolved case was asked already
        move(case, CaseStatus.closed)
        case.updated_at = utcnow()
        conversation = session.get(Conversation, case.conversation_id)
        if conversation is not None:
            text = self.renderer.text("case_closed", language=case.language, case_ref=case.ref)
            self.say(session, conversation, text, case=case)
            if ask_rating:
                self.ask_rating(session, case, conversation)
            if conversation.case_id == case.id:
                state = conv.on_case_closed(conv.State.from_dict(conversation.data), ask_rating=True)
                conversation.state, conversation.data, conversation.case_id = (
                    state.name,
                    state.to_dict(),
                    None,
                )
        audit(session, case, actor, "closed", origin=origin)
        self.notify_desks(session, case, "case_updated", action="closed", actor=actor, origin=origin)
        self.outbox_signal.set()

    def ask_rating(self, session: Session, case: Case, conversation: Conversation) -> None:
        text = self.renderer.text("rating_request", language=case.language, case_ref=case.ref)
        buttons = tuple(Button(label=c.label, value=c.value) for c in conv.rating_choices())
        self.say(session, conversation, text, buttons, case=case)
        conversation.data = conv.on_rating_asked(conv.State.from_dict(conversation.data)).to_dict()

    def remind_fulfilment(self, now: datetime, *, limit: int = 200) -> int:
        """Send the fulfilment reminders due at `now` (the clock is the caller's): customers who have not
        shipped, the visit the day before, and engineers' steps past their SLA. Each is sent once."""
        sent = 0
        terms = self.config.fulfilment
        final = [s.value for s in fulfilment.FINAL] + [fulfilment.Step.credited.value]
        with session_scope(self.db) as session:
            rows = (
                session.execute(
                    select(Fulfilment)
                    .join(Case, col(Case.id) == col(Fulfilment.case_id))
                    .where(col(Fulfilment.step).not_in(final), col(Case.status) != "closed")
                    .order_by(col(Fulfilment.id))
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
                .scalars()
                .all()
            )
            for row in rows:
                case = session.get(Case, row.case_id)
                if case is None or case.status == CaseStatus.closed:
                    continue
                record = fulfilment_record(row)
                for reminder in fulfilment.due(
                    record, since=row.step_since, now=now, reminded=row.reminded, terms=terms
                ):
                    row.reminded = [*row.reminded, reminder.key]
                    conversation = session.get(Conversation, case.conversation_id)
                    if reminder.reply is not None and conversation is not None:
                        rendered = self.renderer.render(
                            reminder.reply, language=case.language, extra={"case_ref": case.ref}
                        )
                        self.say(session, conversation, rendered.text, rendered.buttons, case=case)
                        audit(session, case, "bot", "fulfilment_reminded", key=reminder.key, to="customer")
                    elif reminder.kind == "engineer":
                        audit(
                            session,
                            case,
                            "bot",
                            "fulfilment_overdue",
                            key=reminder.key,
                            step=row.step,
                            since=row.step_since,
                        )
                        self.notify_desks(
                            session,
                            case,
                            "case_updated",
                            action="fulfilment_overdue",
                            actor="bot",
                            origin="bot",
                            key=reminder.key,
                            step=row.step,
                        )
                    sent += 1
        if sent:
            self.outbox_signal.set()
        return sent

    def notify_desks(self, session: Session, case: Case, kind: str, **detail: Any) -> None:
        """Tell the external desks of a change of the case, with what they need to show it."""
        detail = {k: _jsonable(v) for k, v in detail.items()}
        for desk in self.config.external_desks:
            enqueue_event(session, DeskEvent(desk=desk, kind=kind, case_ref=case.ref, detail=detail))


def _case_ref(session: Session, conversation: Conversation) -> str | None:
    """The conversation's open case, or else its latest one (its closing words still belong to it)."""
    query = select(col(Case.ref)).where(col(Case.conversation_id) == conversation.id)
    if conversation.case_id is not None:
        query = query.where(col(Case.id) == conversation.case_id)
    return session.execute(query.order_by(col(Case.id).desc()).limit(1)).scalar_one_or_none() or None


def last_inbound(db: DbEngine, channel: str, chat_id: str) -> dict[str, Any]:
    """The chat's latest message as it was stored ({} when none): a mail's headers to answer it in its thread."""
    with Session(db) as session:
        payload = session.execute(
            select(col(InboxItem.payload))
            .where(col(InboxItem.channel) == channel, col(InboxItem.chat_id) == chat_id)
            .order_by(col(InboxItem.id).desc())
            .limit(1)
        ).scalar_one_or_none()
    return dict(payload or {})


# A customer's link to a file an engineer sent (channels that cannot send files): KeyValue key -> its id.
FILE_LINK_PREFIX = "file-link:"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{32}")
_HOT = "warranty_bot.engine.batch"  # the key of a batch's buffer in `Session.info`
# A chat (channel, chat id) -> its identity, customer and conversation (Engine._contexts).
_Contexts = dict[tuple[str, str], tuple[ChannelIdentity, Customer, Conversation | None]]


class _Statements:
    """The hot path's statements, built once per engine; SQLAlchemy caches their compiled forms."""

    def __init__(self) -> None:
        self._claims: dict[tuple[str, bool], ReturningUpdate[Any]] = {}
        self._accepts: dict[str, ReturningInsert[Any]] = {}
        self._closing: TextClause | None = None
        self._claim_contexts: dict[bool, Select[Any]] = {}
        identity = ChannelIdentity
        self.contexts = _with_contexts(select(identity, Customer, Conversation, Case), outer=False).where(
            tuple_(col(identity.channel), col(identity.chat_id)).in_(bindparam("keys", expanding=True))
        )
        self.log = insert(table_of(Message))
        # A batch's new chats (see Engine._start_chats); the customers' ids in the order of their rows.
        customers = table_of(Customer)
        self.new_customers = insert(customers).returning(customers.c.id, sort_by_parameter_order=True)
        self.new_identities = insert(table_of(ChannelIdentity))
        self._new_conversations: dict[str, Insert] = {}
        messages = table_of(Message)
        self.link_log = (
            update(messages)
            .where(messages.c.conversation_id == bindparam("b_conversation"), messages.c.case_id.is_(None))
            .values(case_id=bindparam("b_case"))
        )
        self.queue = insert(table_of(OutboxItem))
        self.audit = insert(table_of(AuditEntry))
        self.units = insert(table_of(CaseUnit))
        cases = table_of(Case)
        self.case_ref = update(cases).where(cases.c.id == bindparam("b_id")).values(ref=bindparam("b_ref"))
        # Each message's conversation and identity as the batch leaves them (see _Hot.settle).
        conversations, identities = table_of(Conversation), table_of(ChannelIdentity)
        self.settle_conversations = (
            update(conversations)
            .where(conversations.c.id == bindparam("b_id"))
            .values({key: bindparam(f"b_{key}") for key in _SETTLED_CONVERSATION})
        )
        self.settle_identities = (
            update(identities)
            .where(identities.c.id == bindparam("b_id"))
            .values({key: bindparam(f"b_{key}") for key in _SETTLED_IDENTITY})
        )
        # A new case's waiting discount credits (M5): the customer's, or those of its orders' companies
        # (a registry order without a company names none), in one query.
        companies = select(col(RegistryOrder.customer)).where(
            col(RegistryOrder.order_id).in_(bindparam("order_ids", expanding=True)),
            col(RegistryOrder.customer) != "",
        )
        self.credits_waiting = (
            select(col(Credit.order_id), col(Credit.amount), col(Credit.currency))
            .where(
                col(Credit.case_id) != bindparam("case_id"),
                or_(col(Credit.customer_id) == bindparam("customer_id"), col(Credit.company).in_(companies)),
            )
            .order_by(col(Credit.id))
        )

    def closing(self, dialect: Dialect) -> TextClause:
        """PostgreSQL: a batch's closing writes (_Hot.write) as one statement, one round trip instead of one
        a table: the log, the queue and the audit rows inserted, the conversations and identities settled.
        Each table's rows are one JSON parameter, read as the table's row type (`json_populate_recordset`),
        so that the statement is the same for any number of rows (compiled and prepared once), and the
        client's work is one `json.dumps` a table (arrays of each column cost more in psycopg's dumping than
        the round trips they save). Ids follow the order of the rows (ORDER BY their ordinality, as
        SQLAlchemy's own insertmanyvalues relies on). Each chat is once in a batch, so no row is updated
        twice. SQLite has no data-modifying CTEs, and no round trips to save: an executemany a table."""
        if self._closing is not None:
            return self._closing
        quote = dialect.identifier_preparer.quote
        ctes = []
        # Names of our own tables and columns only (the rows are bound): no input reaches the SQL text.
        for name, model in _CLOSING_INSERTS:
            listed = ", ".join(quote(c.name) for c in table_of(model).columns if c.name != "id")
            table = quote(table_of(model).name)
            rows = f"json_populate_recordset(NULL::{table}, CAST(:{name} AS json)) WITH ORDINALITY AS r"
            ctes.append(
                f"{name} AS (INSERT INTO {table} ({listed}) SELECT {listed} FROM {rows} ORDER BY r.ordinality)"  # noqa: S608
            )
        for name, model, columns in _CLOSING_UPDATES:
            table = quote(table_of(model).name)
            assigned = ", ".join(f"{quote(c)} = r.{quote(c)}" for c in columns)
            rows = f"json_populate_recordset(NULL::{table}, CAST(:{name} AS json)) AS r"
            ctes.append(f"{name} AS (UPDATE {table} SET {assigned} FROM {rows} WHERE {table}.id = r.id)")  # noqa: S608
        self._closing = text(f"WITH {', '.join(ctes)} SELECT 1")
        return self._closing

    def claim_contexts(self, *, one: bool) -> Select[Any]:
        """PostgreSQL: the claim (a data-modifying CTE) and the claimed chats' contexts in one statement: the
        claim's columns, then each chat's identity, customer, conversation and open case (None for a chat
        without an identity yet). SQLite has no data-modifying CTEs."""
        statement = self._claim_contexts.get(one)
        if statement is None:
            claimed = self.claim("postgresql", one=one).cte("claimed")
            identity = ChannelIdentity
            chosen = select(claimed, identity, Customer, Conversation, Case).select_from(claimed)
            chosen = chosen.outerjoin(
                identity,
                and_(col(identity.channel) == claimed.c.channel, col(identity.chat_id) == claimed.c.chat_id),
            )
            statement = self._claim_contexts[one] = _with_contexts(chosen, outer=True)
        return statement

    def accept(self, dialect: str) -> ReturningInsert[Any]:
        """Store inbox rows (one, or many as one executemany); a redelivery is skipped, and only the rows
        stored are returned."""
        statement = self._accepts.get(dialect)
        if statement is None:
            inbox = table_of(InboxItem)
            statement = self._accepts[dialect] = (
                insert_for(dialect)(inbox)
                .on_conflict_do_nothing(index_elements=["channel", "external_id"])
                .returning(inbox.c.id, inbox.c.channel, inbox.c.external_id)
            )
        return statement

    def new_conversations(self, dialect: str) -> Insert:
        """New chats' conversations; a chat's conversation that is there already stays as it is."""
        statement = self._new_conversations.get(dialect)
        if statement is None:
            statement = self._new_conversations[dialect] = insert_for(dialect)(
                table_of(Conversation)
            ).on_conflict_do_nothing(index_elements=["channel", "chat_id"])
        return statement

    def claim(self, dialect: str, *, one: bool) -> ReturningUpdate[Any]:
        """Mark the heads of waiting chats done and return them, in the transaction that processes them
        (a failure rolls the mark back with the rest): one statement instead of a query and an update."""
        key = (dialect, one)
        if key not in self._claims:
            inbox = table_of(InboxItem)
            grouped, chosen = inbox.alias("grouped"), inbox.alias("chosen")
            heads = (
                select(func.min(grouped.c.id))
                .where(literal_in(grouped.c.status, INBOX_WAITING))  # in ix_inbox_waiting only
                .group_by(grouped.c.channel, grouped.c.chat_id)
            )
            due = select(chosen.c.id).where(
                chosen.c.id.in_(heads),
                chosen.c.status == PENDING,
                or_(chosen.c.next_attempt_at.is_(None), chosen.c.next_attempt_at <= bindparam("now")),
            )
            if one:
                due = due.where(chosen.c.id == bindparam("item_id"))
            due = due.order_by(chosen.c.id).limit(bindparam("batch"))
            if dialect == "postgresql":
                due = due.with_for_update(skip_locked=True)  # heads another worker holds are its own
            # Whether messages wait after this one: of its chat (`more`), or of any chat (`after`; of the
            # batch's last row, these are messages the batch did not claim). Then the worker goes round once
            # more; otherwise it need not ask again (a message that arrives meanwhile sets `inbox_signal`).
            # (Written out: SQLAlchemy renders RETURNING's columns unqualified, which would bind to `later`.)
            later = (
                "SELECT 1 FROM inboxitem AS later WHERE later.status = 'pending' AND later.id > inboxitem.id"
            )
            more: ColumnElement[bool] = literal_column(
                f"EXISTS ({later} AND later.channel = inboxitem.channel AND later.chat_id = inboxitem.chat_id)"
            )
            after: ColumnElement[bool] = literal_column(f"EXISTS ({later})")
            self._claims[key] = (
                update(inbox)
                .where(inbox.c.id.in_(due))
                .values(status="done", processed_at=bindparam("now"), next_attempt_at=None)
                .returning(
                    inbox.c.id,
                    inbox.c.channel,
                    inbox.c.chat_id,
                    inbox.c.payload,
                    more.label("more"),
                    after.label("after"),
                )
            )
        return self._claims[key]


def _with_contexts(query: Any, *, outer: bool) -> Any:
    """`query` (of a chat's identity) joined to the identity's customer (an outer join if `outer`: a chat
    without an identity yet), its chat's conversation and the conversation's open case."""
    identity, customer, conversation, case = ChannelIdentity, Customer, Conversation, Case
    owner = col(customer.id) == col(identity.customer_id)
    query = query.outerjoin(customer, owner) if outer else query.join(customer, owner)
    return query.outerjoin(
        conversation,
        and_(
            col(conversation.channel) == col(identity.channel),
            col(conversation.chat_id) == col(identity.chat_id),
        ),
    ).outerjoin(case, col(case.id) == col(conversation.case_id))


# What a batch writes of each message's conversation and identity, with Core at its end (_Hot.settle).
_SETTLED_CONVERSATION = ("state", "data", "case_id", "updated_at")
_SETTLED_IDENTITY = ("last_inbound_at", "unreachable")
# _Statements.closing: (the CTE's name and its rows' parameter, table); _Hot.write binds the rows. The rows a
# batch logs, queues and audits (_Hot.log, _Hot.queue, audit) give every column but the id.
_CLOSING_INSERTS: tuple[tuple[str, type[Any]], ...] = (
    ("logged", Message),
    ("queued", OutboxItem),
    ("audited", AuditEntry),
)
_CLOSING_UPDATES: tuple[tuple[str, type[Any], tuple[str, ...]], ...] = (
    ("conversations", Conversation, _SETTLED_CONVERSATION),
    ("identities", ChannelIdentity, _SETTLED_IDENTITY),
)


@dataclass
class _Hot:
    """What a batch logs and queues, written at the end of the batch with its conversations' states and
    identities: one statement on PostgreSQL (`_Statements.closing`), one a table on SQLite (ids follow the
    order of the rows, so a conversation's log and a chat's queue keep their order)."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    outbox: list[dict[str, Any]] = field(default_factory=list)
    looked_up: set[str] = field(default_factory=set)  # serials (normalised) looked up for the batch
    mentioned: dict[str, tuple[str, ...]] = field(default_factory=dict)  # text -> the serials it mentions
    registry: dict[str, UnitFacts] = field(default_factory=dict)  # what the registry knows of them
    settled: list[tuple[Conversation, ChannelIdentity]] = field(default_factory=list)
    audits: list[dict[str, Any]] = field(default_factory=list)  # rows of AuditEntry (see `audit`)

    def log(
        self,
        *,
        conversation_id: int,
        case_id: int | None,
        author: str,
        author_name: str | None,
        text: str,
        buttons: list[dict[str, str]] | None = None,
        attachment_ids: list[int] | None = None,
        client_id: str | None = None,
    ) -> None:
        self.messages.append(
            {
                "conversation_id": conversation_id,
                "case_id": case_id,
                "author": author,
                "author_name": author_name,
                "text": text,
                "buttons": buttons or [],
                "attachment_ids": attachment_ids or [],
                "client_id": client_id,
                "created_at": utcnow(),
            }
        )

    def queue(self, message: OutboundMessage, **extra: Any) -> None:
        now = utcnow()
        self.outbox.append(
            {
                "channel": message.channel,
                "chat_id": message.chat_id,
                "payload": {**to_payload(message), **extra},
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": now,
                "lease_owner": None,
                "failing_since": None,
                "holds_chat": False,
                "last_error": None,
                "external_id": None,
                "created_at": now,
                "sent_at": None,
            }
        )

    def link_case(self, conversation_id: int, case_id: int) -> None:
        for row in self.messages:
            if row["conversation_id"] == conversation_id and row["case_id"] is None:
                row["case_id"] = case_id

    def settle(
        self,
        conversation: Conversation,
        identity: ChannelIdentity,
        *,
        state: str,
        data: dict[str, Any],
        updated_at: datetime,
        last_inbound_at: datetime,
    ) -> None:
        """A message's conversation state and its identity's last message, set on the objects without making
        them dirty: the ORM would write them at the next flush, and a case opened by a later message of the
        batch flushes, one row at a time. `write` writes them for the whole batch instead, with whatever
        the objects hold by then (a fulfilment step or a case after this may change them again)."""
        set_committed_value(conversation, "state", state)
        set_committed_value(conversation, "data", data)
        set_committed_value(conversation, "updated_at", updated_at)
        set_committed_value(identity, "last_inbound_at", last_inbound_at)
        self.settled.append((conversation, identity))

    def write(self, session: Session, statements: _Statements) -> None:
        connection = session.connection()  # Core: the ORM's execute adds nothing to these
        # The settled objects' present values (the ORM's own changes to these columns since are included,
        # and then marked as written, so that the batch's last flush does not write them again).
        conversations = [c for c, _ in self.settled]
        identities = [i for _, i in self.settled]
        if connection.dialect.name == "postgresql":
            rows = {
                "logged": self.messages,
                "queued": self.outbox,
                "audited": self.audits,
                "conversations": _settled_values(conversations, _SETTLED_CONVERSATION, ""),
                "identities": _settled_values(identities, _SETTLED_IDENTITY, ""),
            }
            connection.execute(
                statements.closing(connection.dialect),
                {key: json.dumps(value, default=_json_time) for key, value in rows.items()},
            )
        else:  # an executemany a table
            for new, insert_rows in (
                (self.messages, statements.log),
                (self.outbox, statements.queue),
                (self.audits, statements.audit),
            ):
                if new:
                    connection.execute(insert_rows, new)
            if self.settled:
                conversation_rows = _settled_values(conversations, _SETTLED_CONVERSATION, "b_")
                connection.execute(statements.settle_conversations, conversation_rows)
                connection.execute(
                    statements.settle_identities, _settled_values(identities, _SETTLED_IDENTITY, "b_")
                )
        for objects, keys in ((conversations, _SETTLED_CONVERSATION), (identities, _SETTLED_IDENTITY)):
            for o in objects:
                for key in keys:
                    set_committed_value(o, key, getattr(o, key))
        self.messages, self.outbox, self.settled, self.audits = [], [], [], []


def _settled_values(objects: Sequence[Any], keys: tuple[str, ...], prefix: str) -> list[dict[str, Any]]:
    """The rows of settled objects (_Hot.write): their id and `keys`, named with `prefix`."""
    return [{f"{prefix}id": o.id, **{f"{prefix}{k}": getattr(o, k) for k in keys}} for o in objects]


def retry_parked(db: DbEngine, ids: list[int] | None = None) -> int:
    """Put parked inbound messages (all, or those given) back in the queue; returns how many.

    A parked message held its chat's later messages back: re-driven, it is processed first and they follow
    in their order. Rows marked `failed` by earlier versions are re-driven too.
    """
    with session_scope(db) as session:
        query = update(InboxItem).where(col(InboxItem.status).in_(STOPPED))
        if ids:
            query = query.where(col(InboxItem.id).in_(ids))
        result = session.execute(
            query.values(status=PENDING, attempts=0, next_attempt_at=None, processed_at=None)
        )
        return int(cast(CursorResult[Any], result).rowcount)


# Control characters, and lone surrogates (valid in JSON, but not text that UTF-8 can store).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def clean_text(text: str) -> str:
    """Control characters (PostgreSQL cannot even store NUL) and lone surrogates become U+FFFD; the rest stays."""
    return _CONTROL.sub("\ufffd", text)


def fulfilment_record(row: Fulfilment) -> fulfilment.Record:
    return fulfilment.Record(method=row.method, step=fulfilment.Step(row.step), data=dict(row.data))


def audit(session: Session, case: Case | None, actor: str, action: str, **detail: Any) -> None:
    row: dict[str, Any] = {
        "case_id": case.id if case else None,
        "actor": actor,
        "action": action,
        "detail": {k: _jsonable(v) for k, v in detail.items()},
    }
    hot = session.info.get(_HOT)
    if hot is not None:  # the engine's own batch: its audit rows go out together at its end
        hot.audits.append({**row, "at": utcnow()})
        return
    session.add(AuditEntry(**row))


def _json_time(value: Any) -> str:
    """`json.dumps`'s `default` for the rows of a batch's closing statement: their times, as ISO 8601 (what
    PostgreSQL reads back as `timestamptz`)."""
    if isinstance(value, date | datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _jsonable(value: Any) -> Any:
    if isinstance(value, date | datetime):
        return value.isoformat()
    return value


def _inbox_row(message: InboundMessage) -> dict[str, Any]:
    """The inbox row of an inbound message, its texts cleaned (`clean_text`)."""
    message = replace(
        message,
        text=clean_text(message.text),
        sender_name=clean_text(message.sender_name or "") or None,
        attachments=tuple(replace(a, name=clean_text(a.name)) for a in message.attachments),
    )
    return {
        "channel": message.channel,
        "external_id": message.external_id[:255],
        "chat_id": message.chat_id,
        "payload": inbound_to_payload(message),
        "status": "pending",
        "received_at": message.received_at,
    }


def inbound_to_payload(message: InboundMessage) -> dict[str, Any]:
    return {
        "channel": message.channel,
        "external_id": message.external_id,
        "sender_id": message.sender_id,
        "chat_id": message.chat_id,
        "text": message.text,
        "attachments": [asdict(a) for a in message.attachments],
        "received_at": message.received_at.isoformat(),
        "locale_hint": message.locale_hint,
        "sender_name": message.sender_name,
        "raw": message.raw,
    }


def inbound_from_payload(payload: dict[str, Any]) -> InboundMessage:
    return InboundMessage(
        channel=payload["channel"],
        external_id=payload["external_id"],
        sender_id=payload["sender_id"],
        chat_id=payload["chat_id"],
        text=payload.get("text", ""),
        attachments=tuple(Attachment(**a) for a in payload.get("attachments", ())),
        received_at=datetime.fromisoformat(payload["received_at"]),
        locale_hint=payload.get("locale_hint"),
        sender_name=payload.get("sender_name"),
        raw=payload.get("raw") or {},
    )
