"""The desk protocol: what engineers can do to a case, and what each action tells the customer.

Slack and the local desk page both call these functions; every action is one transaction with its audit row.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlmodel import Session, col

from bot import conversation as conv
from bot.engine import Engine, audit
from bot.messages import Button
from bot.registry import lookup
from bot.status import UNDECIDED, CaseStatus, IllegalTransition, move
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
from policy import (
    Claim,
    ClaimError,
    Decision,
    Method,
    Outcome,
    Policy,
    Proof,
    UnitFacts,
    claim_from_json,
    claim_to_json,
    decision_to_json,
    discount_amount,
    evaluate_units,
    refusal_clauses,
    unit_claim,
)

# The service methods are the policy's (policy.Method); an engineer may also refuse the claim.
REFUSE = "not_covered"
METHODS = (*(m.value for m in Method), REFUSE)
# A method the decision does not allow is given only as one of these, with a reason the customer reads.
GOODWILL = ("goodwill", "chargeable")
# What an engineer can correct on a unit, from the customer's documents or an inspection.
CORRECTABLE = ("port_arrival_date", "production_date", "proof")
CORRECTABLE_PROOF = (Proof.documents.value, Proof.altered.value, Proof.none.value)
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
            registry = lookup(session, [u.serial for u in units])
            # The allowed methods and the orders are the whole case's, whatever page of units is shown.
            every_unit = session.execute(
                select(col(CaseUnit.outcome), col(CaseUnit.decision), col(CaseUnit.order_id)).where(
                    col(CaseUnit.case_id) == case.id
                )
            ).all()
            order_ids = sorted(
                {u.order_id for u in every_unit if u.order_id} | {r.order_id for r in registry.values()}
            )
            orders = {
                o.order_id: o
                for o in session.execute(
                    select(RegistryOrder).where(col(RegistryOrder.order_id).in_(order_ids))
                ).scalars()
            }
            companies = sorted({orders[o].customer for o in order_ids if o in orders and orders[o].customer})
            return {
                **_summary(case, unit_count),
                "unit_count": unit_count,
                "units_offset": units_offset,
                "units_next": following if following < unit_count else None,
                "fault": case.fault,
                "customer": identity.display_name if identity else None,
                # The registry's customer (the company that placed the orders), beside the chat's name.
                "company": ", ".join(companies) or None,
                "refusal_reason": case.refusal_reason,
                "prefers_discount": case.prefers_discount,
                "allowed_methods": list(_allowed_methods(every_unit)),
                "orders": [_order(orders[o], every_unit, self.engine.policy) for o in order_ids if o in orders],
                "units": [_unit(u, registry.get(u.serial)) for u in units],
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
            if case.status == CaseStatus.open:
                _move(case, CaseStatus.claimed)
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
                if case.status == CaseStatus.open:
                    _move(case, CaseStatus.claimed)
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
            if case.status != CaseStatus.to_confirm:  # the refusal stays a person's to confirm
                _move(case, CaseStatus.waiting_customer)
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
        goodwill: str | None = None,
        origin: str = "desk",
    ) -> dict[str, Any]:
        """Set the case's service method, or refuse it ("not_covered", with the reason the customer reads).

        A method the units' decisions do not allow is set only with `goodwill` ("goodwill": free as a
        gesture, or "chargeable": at the customer's cost) and a reason; the customer is told which it is.
        """
        if method not in METHODS:
            raise DeskError(f"method must be one of {', '.join(METHODS)}")
        if goodwill is not None and goodwill not in GOODWILL:
            raise DeskError(f"goodwill must be one of {', '.join(GOODWILL)}")
        with session_scope(self.engine.db) as session:
            case = _find(session, ref)
            _require_open(case)
            units = session.execute(select(CaseUnit).where(col(CaseUnit.case_id) == case.id)).scalars().all()
            allowed = _allowed_methods(units)
            if method == REFUSE:
                if goodwill is not None:
                    raise DeskError("a refusal is not goodwill: give goodwill only with a service method")
                reason = _required(reason or "", "reason")
                cited = sorted(set(clauses or [])) or refusal_clauses((u.outcome, u.clauses) for u in units)
                confirmed = case.status == CaseStatus.to_confirm
                case.claimed_by = case.claimed_by or engineer
                case.method = method
                case.refusal_reason = reason
                _move(case, CaseStatus.resolved)
                self._tell(session, case, "method_not_covered", reason=reason, clauses=cited)
                self._touch(
                    session,
                    case,
                    engineer,
                    "refused",
                    origin=origin,
                    reason=reason,
                    clauses=cited,
                    refusal_confirmed=confirmed,
                )
                self._ask_rating(session, case)
                return _summary(case)
            if method in allowed:
                if goodwill is not None:
                    raise DeskError(f"the decision allows {method}: it is the warranty's, not {goodwill}")
                amount, currency = self._discount(session, units, covered_only=True, method=method)
                case.claimed_by = case.claimed_by or engineer
                case.method = method
                _move(case, CaseStatus.in_service)
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
            # Outside the decision: never by accident, always said to the customer for what it is.
            if goodwill is None:
                allowed_text = ", ".join(allowed) or "none (no unit is covered)"
                raise InvalidAction(
                    f"the decision does not allow {method} (allowed: {allowed_text}); give it as goodwill"
                    " or chargeable, with a reason"
                )
            if goodwill == "chargeable" and method == "discount_compensation":
                raise DeskError("discount compensation cannot be chargeable")
            reason = _required(reason or "", "reason")
            amount, currency = self._discount(session, units, covered_only=False, method=method)
            case.claimed_by = case.claimed_by or engineer
            case.method = method
            _move(case, CaseStatus.in_service)
            self._tell(
                session,
                case,
                f"method_{goodwill}",
                method=method,
                reason=reason,
                amount=amount,
                currency=currency,
            )
            self._touch(
                session,
                case,
                engineer,
                "method_chosen",
                origin=origin,
                method=method,
                goodwill=goodwill,
                reason=reason,
                amount=str(amount) if amount is not None else None,
            )
            return _summary(case)

    def correct_unit(
        self,
        ref: str,
        *,
        engineer: str,
        serial: str,
        changes: dict[str, Any],
        note: str | None = None,
        origin: str = "desk",
    ) -> dict[str, Any]:
        """Correct a unit's facts (port arrival read from documents, proof valid or altered, production date).

        Every unit of the case is decided again (M5 counts the covered ones), the new decisions are stored and
        the correction is audited with the outcome before and after. Returns the case as `get_case` does.
        """
        corrections = _corrections(changes)
        with session_scope(self.engine.db) as session:
            case = _find(session, ref)
            _require_open(case)
            units = list(
                session.execute(
                    select(CaseUnit).where(col(CaseUnit.case_id) == case.id).order_by(col(CaseUnit.id))
                ).scalars()
            )
            wanted = serial.strip().upper()
            index = next((i for i, u in enumerate(units) if u.serial == wanted), None)
            if index is None:
                raise CaseNotFound(f"no unit {serial} on case {case.ref}")
            registry = lookup(session, [u.serial for u in units])
            claims = [_stored_claim(u, case, registry) for u in units]
            before = claims[index]
            claims[index] = replace(before, **corrections)
            if claims[index] == before:
                raise DeskError(f"nothing to correct: unit {wanted} already has these facts")
            previous = [(u.outcome, list(u.clauses)) for u in units]
            decisions = evaluate_units(claims, self.engine.policy)
            for unit, claim, decision in zip(units, claims, decisions, strict=True):
                _store_decision(unit, claim, decision, self.engine.policy)
            redecided = [
                u.serial for u, old in zip(units, previous, strict=True) if (u.outcome, u.clauses) != old
            ]
            status = case.status
            if case.status in UNDECIDED:
                if all(u.outcome == Outcome.not_covered.value for u in units):
                    _move(case, CaseStatus.to_confirm)
                elif case.status == CaseStatus.to_confirm:
                    _move(case, CaseStatus.claimed if case.claimed_by else CaseStatus.open)
            corrected = claim_to_json(claims[index])
            old_facts = claim_to_json(before)
            self._touch(
                session,
                case,
                engineer,
                "unit_corrected",
                origin=origin,
                serial=wanted,
                changes={field: [old_facts[field], corrected[field]] for field in corrections},
                note=(note or "").strip() or None,
                outcome=[previous[index][0], units[index].outcome],
                clauses=units[index].clauses,
                redecided=redecided,
                status=[status, case.status],
            )
        return self.get_case(ref)

    def close(self, ref: str, *, engineer: str, origin: str = "desk") -> dict[str, Any]:
        with session_scope(self.engine.db) as session:
            case = _find(session, ref)
            if case.status == CaseStatus.closed:
                return _summary(case)
            ask_rating = case.status != CaseStatus.resolved  # a resolved case was asked already
            _move(case, CaseStatus.closed)
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

    def _discount(
        self, session: Session, units: Any, *, covered_only: bool, method: str
    ) -> tuple[Decimal | None, str | None]:
        """The M5 amount: 1% of each order's total (half-up), counted once per order, in the orders' currency.

        With the warranty's M5 only the covered units' orders count; as goodwill, every unit's order does.
        """
        if method != "discount_compensation":
            return None, None
        order_ids = {u.order_id for u in units if u.order_id and (u.outcome == "covered" or not covered_only)}
        orders = session.execute(
            select(RegistryOrder).where(col(RegistryOrder.order_id).in_(sorted(order_ids)))
        ).scalars()
        totals = [(o.order_total, o.currency) for o in orders if o.order_total is not None]
        if not totals:
            return None, None
        currencies = {currency for _, currency in totals}
        currency = currencies.pop() if len(currencies) == 1 else None
        policy = self.engine.policy
        return sum((discount_amount(total, policy) for total, _ in totals), Decimal("0")), currency

    def _ask_rating(self, session: Session, case: Case) -> None:
        text = self.engine.renderer.text("rating_request", language=case.language, case_ref=case.ref)
        buttons = tuple(Button(label=c.label, value=c.value) for c in conv.rating_choices())
        self._say(session, case, text, buttons=buttons)
        conversation = session.get(Conversation, case.conversation_id)
        if conversation is not None:
            conversation.data = conv.on_rating_asked(conv.State.from_dict(conversation.data)).to_dict()

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


def _move(case: Case, status: CaseStatus) -> None:
    """The desk's change of a case's status; one the status table does not allow is a 409."""
    try:
        move(case, status)
    except IllegalTransition as error:
        raise InvalidAction(str(error)) from None


def _require_open(case: Case) -> None:
    if case.status == CaseStatus.closed:
        raise InvalidAction(f"case {case.ref} is closed")


def _required(value: str, name: str) -> str:
    value = (value or "").strip()
    if not value:
        raise DeskError(f"{name} must not be empty")
    return value


def _allowed_methods(units: Any) -> tuple[str, ...]:
    """The methods every covered unit's decision allows, in the policy's order; none when no unit is covered."""
    covered = [set(u.decision.get("methods") or ()) for u in units if u.outcome == Outcome.covered.value]
    if not covered:
        return ()
    common = set.intersection(*covered)
    return tuple(m.value for m in Method if m in common)


def _stored_claim(unit: CaseUnit, case: Case, registry: dict[str, UnitFacts]) -> Claim:
    """The facts the unit's decision was taken on; for a case stored before they were kept, rebuilt."""
    stored = unit.decision.get("claim")
    if isinstance(stored, dict):
        try:
            return claim_from_json(stored)
        except ClaimError:
            pass
    record = registry.get(unit.serial)
    claim = unit_claim(
        unit.serial, claim_date=case.claim_date, record=record, prefers_discount=case.prefers_discount
    )
    # The unit's stored port arrival is the one it was decided on; its order, when the registry lost it.
    return replace(claim, port_arrival_date=unit.port_arrival_date, order_id=claim.order_id or unit.order_id)


def _store_decision(unit: CaseUnit, claim: Claim, decision: Decision, policy: Policy) -> None:
    unit.production_date = decision.production_date
    unit.port_arrival_date = claim.port_arrival_date
    unit.warranty_end = decision.warranty_end
    unit.outcome = decision.outcome.value
    unit.basis = decision.basis.value if decision.basis else None
    unit.clauses = list(decision.clauses)
    unit.decision = {**decision_to_json(decision, policy), "claim": claim_to_json(claim)}


def _corrections(changes: dict[str, Any]) -> dict[str, Any]:
    """An engineer's corrections as Claim fields; a bad field or value is a DeskError (a 4xx)."""
    unknown = sorted(set(changes) - set(CORRECTABLE))
    if unknown:
        raise DeskError(f"cannot correct {unknown[0]}: only {', '.join(CORRECTABLE)}")
    if not changes:
        raise DeskError(f"give at least one of {', '.join(CORRECTABLE)}")
    corrections: dict[str, Any] = {}
    for field, value in changes.items():
        if field == "proof":
            if value not in CORRECTABLE_PROOF:
                raise DeskError(f"proof must be one of {', '.join(CORRECTABLE_PROOF)}")
            corrections[field] = Proof(value)
        elif value is None:
            corrections[field] = None  # no longer known
        elif isinstance(value, str) and len(value) == 10:
            try:
                corrections[field] = date.fromisoformat(value)
            except ValueError:
                raise DeskError(f"{field} must be a date YYYY-MM-DD: {value[:20]!r}") from None
        else:
            raise DeskError(f"{field} must be a date YYYY-MM-DD or null")
    return corrections


def _unit(unit: CaseUnit, record: Any) -> dict[str, Any]:
    decision = {k: v for k, v in unit.decision.items() if k != "claim"}
    return {
        "serial": unit.serial,
        "model": unit.model,
        "order_id": unit.order_id,
        "production_date": _iso(unit.production_date),
        "port_arrival_date": _iso(unit.port_arrival_date),
        "warranty_end": _iso(unit.warranty_end),
        "outcome": unit.outcome,
        "basis": unit.basis,
        "clauses": unit.clauses,
        "decision": decision,
        # The facts the decision rests on (what an engineer can correct), and what the registry says.
        "facts": unit.decision.get("claim"),
        "registry": None
        if record is None
        else {
            "order_id": record.order_id,
            "production_date": _iso(record.production_date),
            "port_arrival_date": _iso(record.port_arrival_date),
            "cargo_compensation": record.cargo_compensation,
        },
    }


def _order(order: RegistryOrder, units: Any, policy: Policy) -> dict[str, Any]:
    total = order.order_total
    return {
        "order_id": order.order_id,
        "customer": order.customer or None,
        "order_total": f"{total:.2f}" if total is not None else None,
        "currency": order.currency,
        "order_pieces": order.order_pieces,
        "cargo_compensation": order.cargo_compensation,
        "units": sum(1 for u in units if u.order_id == order.order_id),
        # What M5 would give for this order (1% of its total, half-up), whether or not it applies.
        "discount_amount": f"{discount_amount(total, policy):.2f}" if total is not None else None,
    }


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
