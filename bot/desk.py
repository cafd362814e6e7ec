"""The desk protocol: what engineers can do to a case, and what each action tells the customer.

Slack and the local desk page both call these functions; every action is one transaction with its audit row.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlmodel import Session, col

from bot import conversation as conv
from bot.engine import Engine, audit
from bot.messages import Button
from bot.store import (
    AuditEntry,
    Case,
    CaseUnit,
    ChannelIdentity,
    Conversation,
    Message,
    RegistryOrder,
    StoredAttachment,
    session_scope,
)
from bot.store.clock import utcnow

STATUSES = ("open", "claimed", "waiting_customer", "in_service", "resolved", "closed")
METHODS = ("remote_guidance", "factory_repair", "door_to_door", "discount_compensation", "not_covered")
RATINGS = tuple(str(n) for n in range(1, 6))
UNITS_PAGE = 200  # units in one answer of get_case; a case of thousands is read page by page


class DeskError(Exception):
    """Base of desk errors; `status` is the HTTP status an API answers with."""

    status = 400


class CaseNotFound(DeskError):
    status = 404


class InvalidAction(DeskError):
    status = 409


@dataclass
class Desk:
    engine: Engine

    # --- reading ------------------------------------------------------------------------------------------

    def list_cases(
        self, *, status: str | None = None, query: str | None = None, limit: int = 200
    ) -> list[dict[str, Any]]:
        with Session(self.engine.db) as session:
            statement = select(Case).order_by(col(Case.id).desc()).limit(limit)
            if status:
                statement = statement.where(col(Case.status) == status)
            if query:
                like = f"%{query.strip().upper()}%"
                units = select(col(CaseUnit.case_id)).where(col(CaseUnit.serial).like(like))
                statement = statement.where(col(Case.ref).like(like) | col(Case.id).in_(units))
            cases = list(session.execute(statement).scalars())
            counts = dict(
                session.execute(
                    select(col(CaseUnit.case_id), func.count())
                    .where(col(CaseUnit.case_id).in_([c.id for c in cases]))
                    .group_by(col(CaseUnit.case_id))
                ).all()
            )
            return [_summary(case, counts.get(case.id or 0, 0)) for case in cases]

    def get_case(self, ref: str, *, units_offset: int = 0, units_limit: int = UNITS_PAGE) -> dict[str, Any]:
        """The case with one page of its units (`unit_count` says how many there are, `units_next` where
        the next page starts, or None)."""
        with Session(self.engine.db) as session:
            case = _find(session, ref)
            unit_count = session.execute(
                select(func.count()).select_from(CaseUnit).where(col(CaseUnit.case_id) == case.id)
            ).scalar_one()
            units = (
                session.execute(
                    select(CaseUnit)
                    .where(col(CaseUnit.case_id) == case.id)
                    .order_by(col(CaseUnit.id))
                    .offset(units_offset)
                    .limit(units_limit)
                )
                .scalars()
                .all()
            )
            following = units_offset + len(units)
            messages = (
                session.execute(
                    select(Message).where(col(Message.case_id) == case.id).order_by(col(Message.id))
                )
                .scalars()
                .all()
            )
            files = (
                session.execute(
                    select(StoredAttachment)
                    .where(col(StoredAttachment.case_id) == case.id)
                    .order_by(col(StoredAttachment.id))
                )
                .scalars()
                .all()
            )
            history = (
                session.execute(
                    select(AuditEntry).where(col(AuditEntry.case_id) == case.id).order_by(col(AuditEntry.id))
                )
                .scalars()
                .all()
            )
            identity = (
                session.execute(
                    select(ChannelIdentity).where(
                        col(ChannelIdentity.customer_id) == case.customer_id,
                        col(ChannelIdentity.channel) == case.channel,
                    )
                )
                .scalars()
                .first()
            )
            return {
                **_summary(case, unit_count),
                "unit_count": unit_count,
                "units_offset": units_offset,
                "units_next": following if following < unit_count else None,
                "fault": case.fault,
                "customer": identity.display_name if identity else None,
                "refusal_reason": case.refusal_reason,
                "prefers_discount": case.prefers_discount,
                "units": [
                    {
                        "serial": u.serial,
                        "model": u.model,
                        "production_date": _iso(u.production_date),
                        "port_arrival_date": _iso(u.port_arrival_date),
                        "warranty_end": _iso(u.warranty_end),
                        "outcome": u.outcome,
                        "basis": u.basis,
                        "clauses": u.clauses,
                        "decision": u.decision,
                    }
                    for u in units
                ],
                "messages": [
                    {
                        "id": m.id,
                        "author": m.author,
                        "author_name": m.author_name,
                        "text": m.text,
                        "attachment_ids": m.attachment_ids,
                        "created_at": m.created_at.isoformat(),
                    }
                    for m in messages
                ],
                "attachments": [
                    {"id": f.id, "name": f.name, "mime": f.mime, "size": f.size, "kind": f.kind}
                    for f in files
                ],
                "audit": [
                    {"actor": a.actor, "action": a.action, "detail": a.detail, "at": a.at.isoformat()}
                    for a in history
                ],
            }

    def attachment(self, ref: str, attachment_id: int) -> StoredAttachment:
        with Session(self.engine.db) as session:
            case = _find(session, ref)
            found = session.get(StoredAttachment, attachment_id) if 0 < attachment_id < 2**31 else None
            if found is None or found.case_id != case.id:
                raise CaseNotFound(f"no attachment {attachment_id} on case {ref}")
            return found

    # --- acting -------------------------------------------------------------------------------------------

    def claim(self, ref: str, *, engineer: str, origin: str = "desk") -> dict[str, Any]:
        with session_scope(self.engine.db) as session:
            case = _find(session, ref)
            _require_open(case)
            if case.claimed_by == engineer:
                return _summary(case)
            case.claimed_by = engineer
            if case.status == "open":
                case.status = "claimed"
            self._touch(session, case, engineer, "claimed", origin=origin)
            self._tell(session, case, "case_claimed", engineer=engineer)
            return _summary(case)

    def reply(self, ref: str, *, engineer: str, text: str, origin: str = "desk") -> dict[str, Any]:
        text = _required(text, "text")
        with session_scope(self.engine.db) as session:
            case = _find(session, ref)
            _require_open(case)
            if case.claimed_by is None:
                case.claimed_by = engineer
                case.status = "claimed" if case.status == "open" else case.status
            rendered = self.engine.renderer.text(
                "engineer_reply", language=case.language, text=text, engineer=engineer, case_ref=case.ref
            )
            self._say(session, case, rendered, author="engineer", author_name=engineer)
            self._touch(session, case, engineer, "replied", origin=origin, text=text)
            return _summary(case)

    def note(self, ref: str, *, engineer: str, text: str, origin: str = "desk") -> dict[str, Any]:
        text = _required(text, "text")
        with session_scope(self.engine.db) as session:
            case = _find(session, ref)
            session.add(
                Message(
                    conversation_id=case.conversation_id,
                    case_id=case.id,
                    author="note",
                    author_name=engineer,
                    text=text,
                )
            )
            self._touch(session, case, engineer, "noted", origin=origin, text=text)
            return _summary(case)

    def ask_customer(self, ref: str, *, engineer: str, question: str, origin: str = "desk") -> dict[str, Any]:
        question = _required(question, "question")
        with session_scope(self.engine.db) as session:
            case = _find(session, ref)
            _require_open(case)
            case.status = "waiting_customer"
            case.claimed_by = case.claimed_by or engineer
            rendered = self.engine.renderer.text(
                "ask_customer",
                language=case.language,
                question=question,
                engineer=engineer,
                case_ref=case.ref,
            )
            self._say(session, case, rendered, author="engineer", author_name=engineer)
            self._touch(session, case, engineer, "asked_customer", origin=origin, question=question)
            return _summary(case)

    def choose_method(
        self,
        ref: str,
        *,
        engineer: str,
        method: str,
        reason: str | None = None,
        clauses: list[str] | None = None,
        origin: str = "desk",
    ) -> dict[str, Any]:
        if method not in METHODS:
            raise DeskError(f"method must be one of {', '.join(METHODS)}")
        with session_scope(self.engine.db) as session:
            case = _find(session, ref)
            _require_open(case)
            case.claimed_by = case.claimed_by or engineer
            case.method = method
            units = session.execute(select(CaseUnit).where(col(CaseUnit.case_id) == case.id)).scalars().all()
            if method == "not_covered":
                reason = _required(reason or "", "reason")
                cited = sorted(
                    set(clauses or [])
                    or {
                        c
                        for u in units
                        for c in u.clauses
                        if c[0] in "XM" and c != "M5" and u.outcome == "not_covered"
                    }
                )
                case.refusal_reason = reason
                case.status = "resolved"
                self._tell(session, case, "method_not_covered", reason=reason, clauses=cited)
                self._touch(session, case, engineer, "refused", origin=origin, reason=reason, clauses=cited)
                self._ask_rating(session, case)
            else:
                amount, currency = (
                    _discount(session, units) if method == "discount_compensation" else (None, None)
                )
                case.status = "in_service"
                self._tell(session, case, f"method_{method}", amount=amount, currency=currency)
                self._touch(
                    session,
                    case,
                    engineer,
                    "method_chosen",
                    origin=origin,
                    method=method,
                    amount=str(amount) if amount is not None else None,
                )
            return _summary(case)

    def close(self, ref: str, *, engineer: str, origin: str = "desk") -> dict[str, Any]:
        with session_scope(self.engine.db) as session:
            case = _find(session, ref)
            if case.status == "closed":
                return _summary(case)
            ask_rating = case.status != "resolved"  # a resolved case was asked already
            case.status = "closed"
            self._tell(session, case, "case_closed")
            if ask_rating:
                self._ask_rating(session, case)
            conversation = session.get(Conversation, case.conversation_id)
            if conversation is not None and conversation.case_id == case.id:
                state = conv.on_case_closed(conv.State.from_dict(conversation.data), ask_rating=True)
                conversation.state, conversation.data, conversation.case_id = (
                    state.name,
                    state.to_dict(),
                    None,
                )
            self._touch(session, case, engineer, "closed", origin=origin)
            return _summary(case)

    def mark_desk_ref(self, ref: str, **desk_ref: Any) -> None:
        """Remember where an external desk shows the case (Slack channel and message ts)."""
        with session_scope(self.engine.db) as session:
            case = _find(session, ref)
            case.desk_ref = {**case.desk_ref, **desk_ref}

    # --- helpers ------------------------------------------------------------------------------------------

    def _touch(
        self, session: Session, case: Case, actor: str, action: str, *, origin: str, **detail: Any
    ) -> None:
        case.updated_at = utcnow()
        audit(session, case, actor, action, origin=origin, **detail)
        self.engine.notify_desks(session, case, "case_updated", action=action, actor=actor, origin=origin)

    def _tell(self, session: Session, case: Case, template: str, **params: Any) -> None:
        text = self.engine.renderer.text(template, language=case.language, case_ref=case.ref, **params)
        self._say(session, case, text)

    def _ask_rating(self, session: Session, case: Case) -> None:
        text = self.engine.renderer.text("rating_request", language=case.language, case_ref=case.ref)
        buttons = tuple(Button(label=n, value=f"rate:{n}") for n in RATINGS)
        self._say(session, case, text, buttons=buttons)
        conversation = session.get(Conversation, case.conversation_id)
        if conversation is not None:
            state = conv.State.from_dict(conversation.data)
            conversation.data = {
                **conversation.data,
                "awaiting_rating": True,
                "offered": [b.value for b in buttons] if state.name == "closed" else state.offered,
            }

    def _say(
        self,
        session: Session,
        case: Case,
        text: str,
        *,
        buttons: tuple[Button, ...] = (),
        author: str = "bot",
        author_name: str | None = None,
    ) -> None:
        conversation = session.get(Conversation, case.conversation_id)
        if conversation is None:
            raise CaseNotFound(f"case {case.ref} has no conversation")
        self.engine.say(
            session, conversation, text, buttons, case=case, author=author, author_name=author_name
        )
        self.engine.outbox_signal.set()


def _find(session: Session, ref: str) -> Case:
    case: Case | None = session.execute(
        select(Case).where(col(Case.ref) == ref.strip().upper())
    ).scalar_one_or_none()
    if case is None:
        raise CaseNotFound(f"no case {ref}")
    return case


def _require_open(case: Case) -> None:
    if case.status == "closed":
        raise InvalidAction(f"case {case.ref} is closed")


def _required(value: str, name: str) -> str:
    value = (value or "").strip()
    if not value:
        raise DeskError(f"{name} must not be empty")
    return value


def _discount(session: Session, units: Any) -> tuple[Decimal | None, str | None]:
    """The M5 amount: 1% of each order's total, counted once per order, in the orders' currency."""
    by_order: dict[str, Decimal] = {}
    for unit in units:
        amount = unit.decision.get("discount_amount")
        if amount is not None and unit.order_id:
            by_order.setdefault(unit.order_id, Decimal(amount))
    if not by_order:
        return None, None
    currencies = {
        o.currency
        for o in session.execute(
            select(RegistryOrder).where(col(RegistryOrder.order_id).in_(by_order))
        ).scalars()
    }
    currency = currencies.pop() if len(currencies) == 1 else None
    return sum(by_order.values(), Decimal("0")), currency


def _summary(case: Case, units: int | None = None) -> dict[str, Any]:
    summary = {
        "ref": case.ref,
        "status": case.status,
        "channel": case.channel,
        "language": case.language,
        "claimed_by": case.claimed_by,
        "method": case.method,
        "rating": case.rating,
        "claim_date": case.claim_date.isoformat(),
        "created_at": case.created_at.isoformat(),
        "updated_at": case.updated_at.isoformat(),
    }
    if units is not None:
        summary["units"] = units
    return summary


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None
