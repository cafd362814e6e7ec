"""The engine: stores inbound messages (inbox), runs the conversation, and commits its effects and replies.

One inbound message is processed in one transaction: the conversation's new state, the message log, the
case and its audit rows and the outbox rows commit together, or not at all. Messages of one conversation
are processed one at a time in arrival order, whatever the number of workers.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import asdict, dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, func, or_, select, update
from sqlalchemy import Engine as DbEngine
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col

from bot import conversation as conv
from bot.language import detect, hint_language, hint_variant
from bot.messages import Attachment, Button, InboundMessage, OutboundMessage
from bot.outbox import enqueue, enqueue_event
from bot.registry import lookup, near_serials
from bot.render import Renderer
from bot.status import CaseStatus, move
from bot.store import (
    AuditEntry,
    Case,
    CaseUnit,
    ChannelIdentity,
    Conversation,
    Customer,
    InboxItem,
    Message,
    StoredAttachment,
    lock_chat,
    session_scope,
)
from bot.store.clock import utcnow
from bot.store.db import is_transient
from bot.understanding import default_lexicon, fold, understand
from policy import Outcome, Policy, claim_to_json, decision_to_json

log = logging.getLogger(__name__)

PENDING, PARKED = "pending", "parked"
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
    external_desks: tuple[str, ...] = ()  # outbox channels that receive desk events, e.g. ("slack",)
    # Channels where each message costs the customer (a mail) or a quota (WeChat): one reply per turn.
    one_message_per_turn: frozenset[str] = frozenset({"email", "wechat"})
    max_attempts: int = 5  # a message that fails the same way this many times is parked
    retry_backoff_max_seconds: float = 60.0


@dataclass
class Engine:
    db: DbEngine
    policy: Policy
    renderer: Renderer
    config: EngineConfig = field(default_factory=EngineConfig)
    # Set when new rows wait: the inbox worker and the deliverer wake on it instead of polling.
    inbox_signal: threading.Event = field(default_factory=threading.Event)
    outbox_signal: threading.Event = field(default_factory=threading.Event)

    # --- inbox ------------------------------------------------------------------------------------------

    def accept(self, message: InboundMessage) -> Accepted:
        """Store an inbound message durably; a redelivery (same channel and external id) is recognised."""
        message = replace(
            message,
            text=clean_text(message.text),
            sender_name=clean_text(message.sender_name or "") or None,
            attachments=tuple(replace(a, name=clean_text(a.name)) for a in message.attachments),
        )
        values = {
            "channel": message.channel,
            "external_id": message.external_id[:255],
            "chat_id": message.chat_id,
            "payload": inbound_to_payload(message),
            "status": "pending",
            "received_at": message.received_at,
        }
        with session_scope(self.db) as session:
            dialect = session.get_bind().dialect.name
            insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
            statement = (
                insert(InboxItem)
                .values(**values)
                .on_conflict_do_nothing(index_elements=["channel", "external_id"])
                .returning(col(InboxItem.id))
            )
            inbox_id = session.execute(statement).scalar()
        if inbox_id is None:
            return Accepted(inbox_id=None, duplicate=True)
        self.inbox_signal.set()
        return Accepted(inbox_id=int(inbox_id), duplicate=False)

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
        while done < limit:
            now = utcnow()
            with Session(self.db) as session:
                # The oldest waiting message of each chat is its head; chats whose head is parked or pausing
                # after a failure are skipped here, so that they never crowd out the others.
                heads = (
                    select(func.min(col(InboxItem.id)).label("id"))
                    .where(col(InboxItem.status).in_((PENDING, PARKED)))
                    .group_by(col(InboxItem.channel), col(InboxItem.chat_id))
                    .subquery()
                )
                rows = session.execute(
                    select(col(InboxItem.channel), col(InboxItem.chat_id))
                    .where(
                        col(InboxItem.id).in_(select(heads.c.id)),
                        col(InboxItem.status) == PENDING,
                        or_(col(InboxItem.next_attempt_at).is_(None), col(InboxItem.next_attempt_at) <= now),
                    )
                    .order_by(col(InboxItem.id))
                    .limit(64)
                ).all()
            # Each chat with waiting messages once per round, oldest first; process_chat takes its oldest.
            chats = list(dict.fromkeys((row.channel, row.chat_id) for row in rows))
            progress = 0
            for channel, chat_id in chats[: limit - done]:
                if self.process_chat(channel, chat_id):
                    progress += 1
            if not progress:
                break  # nothing waiting, or only chats held by a parked message or a pause
            done += progress
        return done

    def process_chat(self, channel: str, chat_id: str) -> bool:
        """Process the oldest waiting message of one chat, holding the chat's lock.

        False if there was none, or it may not go now: it waits out a pause after a failure, or it is parked
        (a parked message holds the chat's later messages back, so that a re-drive keeps their order).
        """
        item_id: int | None = None
        try:
            with session_scope(self.db) as session:
                lock_chat(session, "chat", channel, chat_id)
                query = (
                    select(InboxItem)
                    .where(
                        col(InboxItem.channel) == channel,
                        col(InboxItem.chat_id) == chat_id,
                        col(InboxItem.status).in_((PENDING, PARKED)),
                    )
                    .order_by(col(InboxItem.id))
                    .limit(1)
                    .with_for_update()
                )
                item = session.execute(query).scalar_one_or_none()
                if item is None or item.status != PENDING:
                    return False
                if item.next_attempt_at is not None and item.next_attempt_at > utcnow():
                    return False
                item_id = item.id
                self._process(session, item)
                item.status = "done"
                item.processed_at = utcnow()
                item.next_attempt_at = None
        except Exception as error:
            if is_transient(error):
                # The database (or its disk) failed, not this message: it stays pending, in its place.
                log.warning("inbox message of %s not processed yet: %s", channel, _error_text(error))
                raise StorageUnavailable(_error_text(error)) from error
            if item_id is None:
                raise
            log.exception("inbox message %s of %s could not be processed", item_id, channel)
            self._record_failure(item_id, error)  # a transient failure here: the caller's pause and retry
        self.outbox_signal.set()
        return True

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
                log.warning("inbox message %s of %s parked after %s failures", item_id, item.channel, item.attempts)
            else:
                item.next_attempt_at = utcnow() + timedelta(seconds=self.retry_delay(item.attempts))

    def retry_delay(self, failures: int) -> float:
        """The pause after `failures` failures in a row: doubling from a tenth of a second, capped."""
        return float(min(self.config.retry_backoff_max_seconds, 0.1 * 2 ** max(0, failures - 1)))

    # --- one message --------------------------------------------------------------------------------------

    def _process(self, session: Session, item: InboxItem) -> None:
        message = inbound_from_payload(item.payload)
        conversation, identity, customer = self._conversation(session, message)
        case = session.get(Case, conversation.case_id) if conversation.case_id else None

        stored = [
            self._store_attachment(session, conversation, case, a)
            for a in message.attachments
            if a.kind != "rejected"
        ]
        rejected = [a for a in message.attachments if a.kind == "rejected"]
        state = conv.State.from_dict({**conversation.data, "name": conversation.state})
        session.add(
            Message(
                conversation_id=conversation.id or 0,
                case_id=case.id if case else None,
                author="customer",
                author_name=message.sender_name,
                text=self._as_read(message.text, state),
                attachment_ids=[a.id or 0 for a in stored],
                client_id=message.raw.get("client_id") if message.raw else None,
            )
        )

        text = message.text[: self.config.max_text_chars]
        if message.raw and message.raw.get("quiet"):
            # A message to show the engineers without answering it (mail from a list, or asking for no
            # automatic answer): it goes to the case, or opens one, and the conversation waits for a person.
            self._take_quietly(session, message, text, stored, conversation, customer, case, state)
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

        language = transition.state.language
        rendered = [self.renderer.render(r, language=r.language or language, extra=c) for r, c in replies]
        if rendered and conversation.channel in self.config.one_message_per_turn:
            # One mail (or one of WeChat's five messages) per customer message, not one per sentence.
            text = "\n\n".join(r.text for r in rendered)
            self.say(session, conversation, text, tuple(b for r in rendered for b in r.buttons), case=case)
        else:
            for reply in rendered:
                self.say(session, conversation, reply.text, reply.buttons, case=case)

        conversation.state = transition.state.name
        conversation.data = transition.state.to_dict()
        conversation.updated_at = utcnow()
        identity.last_inbound_at = message.received_at

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
                units=(), fault=text, claim_date=utcnow().date(), prefers_discount=False, attachment_ids=ids,
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
        mentioned = understand(text, default_lexicon(), self.policy).serials
        registry = lookup(session, set(state.serials) | set(mentioned))
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

    def _labels(self, offered: tuple[str, ...]) -> dict[str, str]:
        """The offered buttons' labels in every language, folded, as a customer may type one back."""
        labels: dict[str, str] = {}
        for value in offered:
            name = conv.label_name(value)
            if name is None:
                continue
            for language in conv.LANGUAGES:
                labels[fold(self.renderer.label(name, language=language)).strip(" .!¡¿?")] = value
        return labels

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
        self, session: Session, message: InboundMessage
    ) -> tuple[Conversation, ChannelIdentity, Customer]:
        identity = session.execute(
            select(ChannelIdentity).where(
                col(ChannelIdentity.channel) == message.channel,
                col(ChannelIdentity.chat_id) == message.chat_id,
            )
        ).scalar_one_or_none()
        if identity is None:
            # A written variant (pt-PT) when the hint names one, else the hint's language.
            language = hint_variant(message.locale_hint) or hint_language(message.locale_hint)
            customer = Customer(name=message.sender_name, language=language)
            session.add(customer)
            session.flush()
            identity = ChannelIdentity(
                customer_id=customer.id or 0,
                channel=message.channel,
                chat_id=message.chat_id,
                sender_id=message.sender_id,
                display_name=message.sender_name,
            )
            session.add(identity)
        else:
            customer = session.get(Customer, identity.customer_id) or Customer()
            identity.unreachable = False  # they wrote to us: reachable again
        conversation = session.execute(
            select(Conversation).where(
                col(Conversation.channel) == message.channel,
                col(Conversation.chat_id) == message.chat_id,
            )
        ).scalar_one_or_none()
        if conversation is None:
            conversation = Conversation(
                customer_id=customer.id or 0, channel=message.channel, chat_id=message.chat_id
            )
            session.add(conversation)
        session.flush()
        return conversation, identity, customer

    def _store_attachment(
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
        session.flush()
        case.ref = f"{self.config.case_ref_prefix}-{case.created_at.year}-{case.id:06d}"
        for unit in effect.units:
            d = unit.decision
            decision = decision_to_json(d, self.policy)
            if unit.claim is not None:
                decision["claim"] = claim_to_json(unit.claim)  # the facts, for an engineer's correction
            session.add(
                CaseUnit(
                    case_id=case.id or 0,
                    serial=unit.serial,
                    model=unit.model,
                    order_id=unit.order_id,
                    production_date=unit.production_date,
                    port_arrival_date=unit.port_arrival_date,
                    warranty_end=d.warranty_end,
                    outcome=d.outcome.value,
                    basis=d.basis.value if d.basis else None,
                    clauses=list(d.clauses),
                    decision=decision,
                )
            )
        for attachment_id in effect.attachment_ids:
            stored = session.get(StoredAttachment, attachment_id)
            if stored is not None:
                stored.case_id = case.id
        # Everything said so far belongs to the case's history.
        for logged in session.execute(
            select(Message).where(
                col(Message.conversation_id) == conversation.id,
                col(Message.case_id).is_(None),
            )
        ).scalars():
            logged.case_id = case.id
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
        return case

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
        conversation.case_id = case.id
        return case

    def _relay(self, session: Session, case: Case, effect: conv.RelayToCase, message: InboundMessage) -> None:
        if case.status == CaseStatus.waiting_customer:
            move(case, CaseStatus.claimed)
            case.updated_at = utcnow()
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
                    f.id: {"name": f.name, "mime": f.mime}
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
    ) -> None:
        """Log a message to the customer and queue it for their channel, in the caller's transaction."""
        session.add(
            Message(
                conversation_id=conversation.id or 0,
                case_id=case.id if case else None,
                author=author,
                author_name=author_name,
                text=text,
                buttons=[asdict(b) for b in buttons],
            )
        )
        enqueue(
            session,
            OutboundMessage(
                channel=conversation.channel, chat_id=conversation.chat_id, text=text, buttons=buttons
            ),
            author=author,  # an engineer's words are no auto-reply (email's Auto-Submitted)
        )

    def notify_desks(self, session: Session, case: Case, event: str, **data: Any) -> None:
        for desk in self.config.external_desks:
            enqueue_event(session, desk, case.ref, event, case_id=case.id, **data)


def retry_parked(db: DbEngine, ids: list[int] | None = None) -> int:
    """Put parked inbound messages (all, or those given) back in the queue; returns how many.

    A parked message held its chat's later messages back: re-driven, it is processed first and they follow
    in their order. Rows marked `failed` by earlier versions are re-driven too.
    """
    with session_scope(db) as session:
        query = update(InboxItem).where(col(InboxItem.status).in_(STOPPED))
        if ids:
            query = query.where(col(InboxItem.id).in_(ids))
        result = session.execute(query.values(status=PENDING, attempts=0, next_attempt_at=None, processed_at=None))
        return int(cast(CursorResult[Any], result).rowcount)


# Control characters, and lone surrogates (valid in JSON, but not text that UTF-8 can store).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def clean_text(text: str) -> str:
    """Control characters (PostgreSQL cannot even store NUL) and lone surrogates become U+FFFD; the rest stays."""
    return _CONTROL.sub("\ufffd", text)


def audit(session: Session, case: Case | None, actor: str, action: str, **detail: Any) -> None:
    session.add(
        AuditEntry(
            case_id=case.id if case else None,
            actor=actor,
            action=action,
            detail={k: _jsonable(v) for k, v in detail.items()},
        )
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, date | datetime):
        return value.isoformat()
    return value


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
