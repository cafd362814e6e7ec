"""The desk protocol: what engineers can do to a case, and what each action tells the customer.

Slack and the local desk page both call these functions; every action is one transaction with its audit row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import CursorResult, and_, func, or_, select, update
from sqlmodel import Session, col

from bot import fulfilment
from bot.engine import Engine, audit, fulfilment_record
from bot.messages import CASE_UPDATED, Attachment, Button
from bot.registry import lookup
from bot.status import UNDECIDED, CaseStatus, IllegalTransition, move
from bot.store import (
    AuditEntry,
    Case,
    CaseUnit,
    ChannelIdentity,
    Conversation,
    Credit,
    Customer,
    Fulfilment,
    KeyValue,
    Message,
    RegistryOrder,
    StoredAttachment,
    session_scope,
)
from bot.store.clock import utcnow
from bot.store.kv import kv_put
from policy import (
    Claim,
    ClaimError,
    Decision,
    Method,
    Outcome,
    Policy,
    Proof,
    UnitFacts,
    cargo_pieces,
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
LIST_LIMIT = 200  # cases in one answer of list_cases
FACETS_LIMIT = 100  # assignees and channels offered as filters
LAST_TEXT = 140  # characters of a case's last message shown in the list
# An engineer's "typing" signal is shown to the customer this long after the last one (the desk sends one
# every few seconds while the engineer writes); kept in KeyValue so every web process sees it.
TYPING_FOR = timedelta(seconds=6)


# Cases nobody has taken yet: open ones, and refusals to confirm (every unit refused) no one claimed.
_UNCLAIMED = or_(
    col(Case.status) == CaseStatus.open,
    and_(col(Case.status) == CaseStatus.to_confirm, col(Case.claimed_by).is_(None)),
)


@dataclass(frozen=True, kw_only=True)
class Reminder:
    """An unclaimed case an external desk should announce again."""

    ref: str
    desk_ref: dict[str, Any]
    opened_at: datetime


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
        self,
        *,
        status: str | None = None,
        query: str | None = None,
        assignee: str | None = None,
        unassigned: bool = False,
        channel: str | None = None,
        limit: int = LIST_LIMIT,
    ) -> list[dict[str, Any]]:
        """The cases with the latest activity first, each with its units' outcomes, its last message and how
        many customer messages the desk has not shown yet (`unread`).

        `query` looks in the reference, the fault, the units' serials and orders, the customer's name and
        contact (chat id: a phone number or an e-mail address) and the registry's company, case-insensitively
        and as a bound parameter; at most `limit` cases come back.
        """
        with Session(self.engine.db) as session:
            statement = (
                select(Case)
                .order_by(col(Case.updated_at).desc(), col(Case.id).desc())
                .limit(max(1, min(limit, LIST_LIMIT)))
            )
            if status:
                statement = statement.where(col(Case.status) == status)
            if unassigned:
                statement = statement.where(col(Case.claimed_by).is_(None))
            elif assignee:
                statement = statement.where(col(Case.claimed_by) == assignee)
            if channel:
                statement = statement.where(col(Case.channel) == channel)
            if query and query.strip():
                statement = statement.where(_matches(query.strip()))
            cases = list(session.execute(statement).scalars())
            ids = [c.id for c in cases]
            outcomes: dict[int, dict[str, int]] = {}
            for case_id, outcome, count in session.execute(
                select(col(CaseUnit.case_id), col(CaseUnit.outcome), func.count())
                .where(col(CaseUnit.case_id).in_(ids))
                .group_by(col(CaseUnit.case_id), col(CaseUnit.outcome))
            ):
                outcomes.setdefault(case_id, {})[outcome] = count
            unread = dict(
                session.execute(
                    select(col(Message.case_id), func.count())
                    .join(Case, col(Case.id) == col(Message.case_id))
                    .where(
                        col(Message.case_id).in_(ids),
                        col(Message.author) == "customer",
                        col(Message.id) > func.coalesce(col(Case.desk_seen_id), 0),
                    )
                    .group_by(col(Message.case_id))
                ).all()
            )
            latest = (
                select(func.max(col(Message.id)))
                .where(col(Message.case_id).in_(ids))
                .group_by(col(Message.case_id))
            )
            from_customer = latest.where(col(Message.author) == "customer")
            last, last_customer = (
                {
                    m.case_id: m
                    for m in session.execute(select(Message).where(col(Message.id).in_(q))).scalars()
                }
                for q in (latest, from_customer)
            )
            names = self._customer_names(session, cases)
            return [
                {
                    **_summary(case, sum(outcomes.get(case.id or 0, {}).values())),
                    "outcomes": outcomes.get(case.id or 0, {}),
                    "unread": unread.get(case.id or 0, 0),
                    "customer": names.get((case.customer_id, case.channel)),
                    "last_message": _last_message(last.get(case.id or 0)),
                    "last_customer_message": _last_message(last_customer.get(case.id or 0)),
                }
                for case in cases
            ]

    def list_facets(self) -> dict[str, Any]:
        """What the list can be filtered by (engineers who hold cases, channels with cases), and how many cases
        have customer messages the desk has not shown: the number in the page's title."""
        with Session(self.engine.db) as session:
            assignees = session.execute(
                select(col(Case.claimed_by))
                .where(col(Case.claimed_by).is_not(None))
                .group_by(col(Case.claimed_by))
                .order_by(col(Case.claimed_by))
                .limit(FACETS_LIMIT)
            ).scalars()
            channels = session.execute(
                select(col(Case.channel))
                .group_by(col(Case.channel))
                .order_by(col(Case.channel))
                .limit(FACETS_LIMIT)
            ).scalars()
            unread = session.execute(
                select(func.count(func.distinct(col(Message.case_id))))
                .join(Case, col(Case.id) == col(Message.case_id))
                .where(
                    col(Message.author) == "customer",
                    col(Message.id) > func.coalesce(col(Case.desk_seen_id), 0),
                )
            ).scalar_one()
            return {"assignees": list(assignees), "channels": list(channels), "unread_cases": int(unread)}

    def mark_seen(self, ref: str, message_id: int) -> dict[str, Any]:
        """The desk has shown the case's messages up to `message_id`: they are no longer unread.

        Seen is kept on the case, for the whole desk: one engineer opening the case clears its badge for all.
        It never moves back, nor past the case's last message; it is no action on the case (no audit row, the
        case's activity time stays).
        """
        with session_scope(self.engine.db) as session:
            case = _find(session, ref)
            newest = session.execute(
                select(func.max(col(Message.id))).where(col(Message.case_id) == case.id)
            ).scalar_one()
            seen = min(message_id, newest or 0)
            # Only forward, in one statement: two desks marking at once never move it back.
            session.execute(
                update(Case)
                .where(
                    col(Case.id) == case.id,
                    col(Case.desk_seen_id).is_(None) | (col(Case.desk_seen_id) < seen),
                )
                .values(desk_seen_id=seen)
                .execution_options(synchronize_session=False)
            )
            return {"ref": case.ref, "seen_id": max(seen, case.desk_seen_id or 0)}

    def _customer_names(self, session: Session, cases: list[Case]) -> dict[tuple[int, str], str]:
        if not cases:
            return {}
        rows = session.execute(
            select(
                col(ChannelIdentity.customer_id),
                col(ChannelIdentity.channel),
                col(ChannelIdentity.display_name),
            ).where(
                col(ChannelIdentity.customer_id).in_({c.customer_id for c in cases}),
                col(ChannelIdentity.display_name).is_not(None),
            )
        ).all()
        return {(customer_id, channel): name for customer_id, channel, name in rows if name}

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
            row = session.execute(
                select(Fulfilment).where(col(Fulfilment.case_id) == case.id)
            ).scalar_one_or_none()
            credits = (
                session.execute(
                    select(Credit)
                    .where((col(Credit.customer_id) == case.customer_id) | col(Credit.company).in_(companies))
                    .order_by(col(Credit.id))
                )
                .scalars()
                .all()
            )
            refs = dict(
                session.execute(
                    select(col(Case.id), col(Case.ref)).where(col(Case.id).in_({c.case_id for c in credits}))
                ).all()
            )
            return {
                "fulfilment": _fulfilment(row),
                # Discounts granted on this case, and those this customer has from earlier cases (M5): the
                # sales team takes them off the next order.
                "credits": [_credit(c, case.ref) for c in credits if c.case_id == case.id],
                "credits_available": [
                    _credit(c, refs.get(c.case_id, "")) for c in credits if c.case_id != case.id
                ],
                **_summary(case, unit_count),
                "unit_count": unit_count,
                "units_offset": units_offset,
                "units_next": following if following < unit_count else None,
                "fault": case.fault,
                "customer": identity.display_name if identity else None,
                # The registry's customer (the company that placed the orders), beside the chat's name.
                "company": ", ".join(companies) or None,
                "refusal_reason": case.refusal_reason,
                "seen_id": case.desk_seen_id,  # the last message the desk has shown; later customer ones are new
                "prefers_discount": case.prefers_discount,
                "allowed_methods": list(_allowed_methods(every_unit)),
                "orders": [
                    _order(orders[o], every_unit, self.engine.policy) for o in order_ids if o in orders
                ],
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
            # A note is written in the reply's box: the customer saw someone typing, and no message is coming.
            _stop_typing(session, case.conversation_id)
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
                cargo = self._cargo_orders(session, units)
                if cargo is None:
                    self._tell(session, case, "method_not_covered", reason=reason, clauses=cited)
                else:
                    self._tell_cargo_once(session, case, cargo, engineer, reason=reason, origin=origin)
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
                self._start_fulfilment(session, case, units, method, engineer, origin=origin, goodwill=None)
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
            self._start_fulfilment(session, case, units, method, engineer, origin=origin, goodwill=goodwill)
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
            self.engine.close_case(session, case, engineer, origin=origin)
            return _summary(case)

    def fulfil(
        self,
        ref: str,
        *,
        engineer: str,
        action: str,
        text: str = "",
        origin: str = "desk",
        files: Sequence[Attachment] = (),
    ) -> dict[str, Any]:
        """The engineer's next step of the chosen method (bot/fulfilment.py TRANSITIONS): unit received,
        diagnosed, repaired, shipped back with tracking; parts, guidance, "fixed?"; visit slots, the report.
        The customer is told in their language; each step is an audit row; a final step closes the case.
        `files` (already in the attachment store) go with a guidance step: kept on the case, sent with it."""
        if files and action != "guide":
            raise InvalidAction("files can only be sent with a guidance step (action 'guide')")
        with session_scope(self.engine.db) as session:
            case = _find(session, ref)
            _require_open(case)
            row = session.execute(
                select(Fulfilment).where(col(Fulfilment.case_id) == case.id)
            ).scalar_one_or_none()
            if row is None:
                raise InvalidAction(f"case {case.ref} has no service method with steps (choose one first)")
            try:
                change = fulfilment.engineer_action(fulfilment_record(row), action, text)
            except fulfilment.FulfilmentError as error:
                raise InvalidAction(str(error)) from None
            case.claimed_by = case.claimed_by or engineer
            conversation = session.get(Conversation, case.conversation_id)
            if files and conversation is None:
                raise InvalidAction(f"case {case.ref} has no conversation to send files to")
            if files and conversation and not self.engine.can_send_files(conversation.channel):
                raise InvalidAction(
                    f"the customer's channel ({conversation.channel}) cannot take files and PUBLIC_URL is not "
                    "set for a link to them: set PUBLIC_URL, or send the guidance as text"
                )
            stored = [
                self.engine.store_attachment(session, conversation, case, f) for f in files if conversation
            ]
            self.engine.apply_fulfilment(
                session, case, row, change, actor=engineer, origin=origin, files=stored
            )
            return _summary(case)

    def credits(self, *, company: str | None = None) -> list[dict[str, Any]]:
        """Discount credits granted (M5), newest first: for the sales team, to take off the next order."""
        with Session(self.engine.db) as session:
            statement = select(Credit, col(Case.ref)).join(Case, col(Case.id) == col(Credit.case_id))
            if company:
                statement = statement.where(col(Credit.company).ilike(f"%{company.strip()}%"))
            rows = session.execute(statement.order_by(col(Credit.id).desc())).all()
            return [_credit(credit, ref) for credit, ref in rows]

    def typing(self, ref: str, *, engineer: str | None) -> dict[str, Any]:
        """An engineer is writing a reply on the case: the customer's web chat shows it for TYPING_FOR.
        `engineer` is the name the customer sees (its first word), None for "an engineer"."""
        first = engineer.split()[0] if engineer and engineer.strip() else None
        with Session(self.engine.db) as session:
            case = _find(session, ref)
            _require_open(case)
        until = utcnow() + TYPING_FOR
        kv_put(self.engine.db, _typing_key(case.conversation_id), {"engineer": first}, expires_at=until)
        return {"ref": case.ref, "channel": case.channel, "until": until.isoformat()}

    def typing_in(self, channel: str, chat_id: str) -> dict[str, Any] | None:
        """Who is writing to this conversation now ({"engineer": first name or None}), or None."""
        with Session(self.engine.db) as session:
            conversation_id = session.execute(
                select(col(Conversation.id)).where(
                    col(Conversation.channel) == channel, col(Conversation.chat_id) == chat_id
                )
            ).scalar_one_or_none()
            if conversation_id is None:
                return None
            value = session.execute(
                select(col(KeyValue.value)).where(
                    col(KeyValue.key) == _typing_key(conversation_id), col(KeyValue.expires_at) > utcnow()
                )
            ).scalar_one_or_none()
            return {"engineer": value.get("engineer")} if value is not None else None

    def mark_desk_ref(self, ref: str, **desk_ref: Any) -> None:
        """Remember where an external desk shows the case (Slack channel and message ts)."""
        with session_scope(self.engine.db) as session:
            case = _find(session, ref)
            case.desk_ref = {**case.desk_ref, **desk_ref}

    def desk_ref(self, ref: str) -> dict[str, Any]:
        """Where an external desk shows the case ({} while it does not)."""
        with Session(self.engine.db) as session:
            found = session.execute(
                select(col(Case.desk_ref)).where(col(Case.ref) == ref)
            ).scalar_one_or_none()
        return dict(found or {})

    def case_at(self, key: str, value: str) -> str | None:
        """The case an external desk shows where its `desk_ref[key]` is `value` (a Slack thread's ts)."""
        with Session(self.engine.db) as session:
            found: str | None = session.execute(
                select(col(Case.ref)).where(col(Case.desk_ref)[key].as_string() == value).limit(1)
            ).scalar_one_or_none()
        return found

    def take_due_reminders(self, after: timedelta, *, limit: int = 50) -> list[Reminder]:
        """Cases unclaimed `after` their opening (or their last reminder) and shown on an external desk, each
        marked reminded in the same step, so that one worker alone reminds of it."""
        now = utcnow()
        cutoff = now - after
        due: list[Reminder] = []
        with session_scope(self.engine.db) as session:
            cases = (
                session.execute(
                    select(Case)
                    .where(
                        _UNCLAIMED,
                        or_(
                            and_(col(Case.reminded_at).is_(None), col(Case.created_at) <= cutoff),
                            col(Case.reminded_at) <= cutoff,
                        ),
                    )
                    .order_by(col(Case.id))
                    .limit(limit)
                )
                .scalars()
                .all()
            )
            for case in cases:
                if not case.desk_ref:
                    continue  # not on the desk yet: the case message comes first
                previous = (
                    col(Case.reminded_at).is_(None)
                    if case.reminded_at is None
                    else col(Case.reminded_at) == case.reminded_at
                )
                taken = session.execute(
                    update(Case).where(col(Case.id) == case.id, _UNCLAIMED, previous).values(reminded_at=now)
                )
                if cast(CursorResult[Any], taken).rowcount == 1:
                    due.append(
                        Reminder(ref=case.ref, desk_ref=dict(case.desk_ref), opened_at=case.created_at)
                    )
        return due

    # --- helpers ------------------------------------------------------------------------------------------

    def _touch(
        self, session: Session, case: Case, actor: str, action: str, *, origin: str, **detail: Any
    ) -> None:
        case.updated_at = utcnow()
        audit(session, case, actor, action, origin=origin, **detail)
        self.engine.notify_desks(
            session, case, CASE_UPDATED, **detail, action=action, actor=actor, origin=origin
        )

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
        conversation = session.get(Conversation, case.conversation_id)
        if conversation is None:
            raise CaseNotFound(f"case {case.ref} has no conversation")
        self.engine.ask_rating(session, case, conversation)
        self.engine.outbox_signal.set()

    def _start_fulfilment(
        self,
        session: Session,
        case: Case,
        units: Any,
        method: str,
        engineer: str,
        *,
        origin: str,
        goodwill: str | None,
    ) -> None:
        """The method's first step (an RMA and the return address for factory repair; the credits for the
        discount), replacing the steps of a method chosen before."""
        credits = (
            self._grant_credits(session, case, units, engineer, goodwill=goodwill)
            if (method == "discount_compensation")
            else []
        )
        change = fulfilment.start(
            method, case_ref=case.ref, terms=self.engine.config.fulfilment, credits=credits, goodwill=goodwill
        )
        row = session.execute(
            select(Fulfilment).where(col(Fulfilment.case_id) == case.id)
        ).scalar_one_or_none()
        if change is None:
            if row is not None:
                session.delete(row)
            return
        if row is None:
            row = Fulfilment(case_id=case.id or 0, method=method, step=change.record.step.value)
            session.add(row)
        row.method, row.reminded = method, []
        row.rma = change.record.data.get("rma")
        self.engine.apply_fulfilment(session, case, row, change, actor=engineer, origin=origin)

    def _cargo_orders(self, session: Session, units: Any) -> list[dict[str, Any]] | None:
        """The orders of a case refused for cargo compensation (M1) on every unit; None for any other case."""
        if not units or any(u.outcome != "not_covered" or "M1" not in u.clauses for u in units):
            return None
        order_ids = sorted({u.order_id for u in units if u.order_id})
        orders = {
            o.order_id: o
            for o in session.execute(
                select(RegistryOrder).where(col(RegistryOrder.order_id).in_(order_ids))
            ).scalars()
        }
        return [
            {
                "order_id": order_id,
                "order_pieces": orders[order_id].order_pieces if order_id in orders else None,
                "cargo_pieces": cargo_pieces(orders[order_id].order_pieces or 0, self.engine.policy)
                if order_id in orders and orders[order_id].order_pieces
                else None,
            }
            for order_id in order_ids
        ]

    def _tell_cargo_once(
        self,
        session: Session,
        case: Case,
        orders: list[dict[str, Any]],
        engineer: str,
        *,
        reason: str,
        origin: str,
    ) -> None:
        """M1: the customer is told why no service applies, once (a refusal confirmed again says nothing new)."""
        row = session.execute(
            select(Fulfilment).where(col(Fulfilment.case_id) == case.id)
        ).scalar_one_or_none()
        if row is not None and row.step == fulfilment.Step.no_service.value:
            return
        change = fulfilment.cargo_refusal(orders, reason=reason)
        if row is None:
            row = Fulfilment(case_id=case.id or 0, method=change.record.method, step=change.record.step.value)
            session.add(row)
        row.method = change.record.method
        self.engine.apply_fulfilment(session, case, row, change, actor=engineer, origin=origin)

    def _grant_credits(
        self, session: Session, case: Case, units: Any, engineer: str, *, goodwill: str | None
    ) -> list[dict[str, Any]]:
        """One credit per order (1% of its total, half-up): the covered units' orders, or every unit's as
        goodwill. A case's credits are granted once, whatever the engineer chooses again."""
        existing = session.execute(select(Credit).where(col(Credit.case_id) == case.id)).scalars().all()
        if existing:
            return [_credit(c, case.ref) for c in existing]
        order_ids = {u.order_id for u in units if u.order_id and (u.outcome == "covered" or goodwill)}
        orders = (
            session.execute(select(RegistryOrder).where(col(RegistryOrder.order_id).in_(sorted(order_ids))))
            .scalars()
            .all()
        )
        granted = []
        for order in sorted(orders, key=lambda o: o.order_id):
            if order.order_total is None:
                continue
            credit = Credit(
                case_id=case.id or 0,
                customer_id=case.customer_id,
                company=order.customer or "",
                order_id=order.order_id,
                amount=discount_amount(order.order_total, self.engine.policy),
                currency=order.currency,
                goodwill=goodwill is not None,
                granted_by=engineer,
            )
            session.add(credit)
            granted.append(_credit(credit, case.ref))
        session.flush()
        return granted

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
        _stop_typing(session, conversation.id)  # the message the customer saw being written is here
        self.engine.say(
            session, conversation, text, buttons, case=case, author=author, author_name=author_name
        )
        self.engine.outbox_signal.set()


def _matches(query: str) -> Any:
    """Cases whose reference, fault, units (serial, order), customer (name, contact) or registry company
    contain `query`, ignoring case; `%` and `_` in it are literal."""
    escaped = query.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    like = f"%{escaped}%"

    def has(column: Any) -> Any:
        return func.lower(column).like(like, escape="\\")

    units = select(col(CaseUnit.case_id)).where(has(col(CaseUnit.serial)) | has(col(CaseUnit.order_id)))
    companies = select(col(RegistryOrder.order_id)).where(has(col(RegistryOrder.customer)))
    by_company = select(col(CaseUnit.case_id)).where(col(CaseUnit.order_id).in_(companies))
    identities = select(col(ChannelIdentity.customer_id)).where(
        has(col(ChannelIdentity.display_name))
        | has(col(ChannelIdentity.chat_id))
        | has(col(ChannelIdentity.sender_id))
    )
    customers = select(col(Customer.id)).where(has(col(Customer.name)))
    return or_(
        has(col(Case.ref)),
        has(col(Case.fault)),
        col(Case.id).in_(units),
        col(Case.id).in_(by_company),
        col(Case.customer_id).in_(identities),
        col(Case.customer_id).in_(customers),
    )


def _last_message(message: Message | None) -> dict[str, Any] | None:
    if message is None:
        return None
    text = " ".join(message.text.split())
    if not text and message.attachment_ids:
        text = f"({len(message.attachment_ids)} attachment{'s' if len(message.attachment_ids) > 1 else ''})"
    return {
        "id": message.id,
        "author": message.author,
        "author_name": message.author_name if message.author in ("engineer", "note") else None,
        "text": text[:LAST_TEXT] + ("…" if len(text) > LAST_TEXT else ""),
        "created_at": message.created_at.isoformat(),
    }


def _stop_typing(session: Session, conversation_id: int | None) -> None:
    typing = session.get(KeyValue, _typing_key(conversation_id))
    if typing is not None:
        session.delete(typing)


def _typing_key(conversation_id: int | None) -> str:
    return f"typing:{conversation_id}"


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
        raise InvalidAction(f"case {case.ref} is closed: it opens again when the customer writes again")


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


def _fulfilment(row: Fulfilment | None) -> dict[str, Any] | None:
    if row is None:
        return None
    record = fulfilment_record(row)
    return {
        "method": row.method,
        "step": row.step,
        "step_label": fulfilment.STEP_LABELS.get(row.step, row.step),
        "step_since": row.step_since.isoformat(),
        "rma": row.rma,
        "data": row.data,
        "reminded": row.reminded,
        "actions": [
            {"action": a, "label": fulfilment.ACTION_LABELS[a], "input": fulfilment.INPUTS.get(a)}
            for a in fulfilment.allowed_actions(record)
        ],
    }


def _credit(credit: Credit, case_ref: str) -> dict[str, Any]:
    return {
        "case_ref": case_ref,
        "company": credit.company or None,
        "order_id": credit.order_id,
        "amount": f"{credit.amount:.2f}",
        "currency": credit.currency,
        "goodwill": credit.goodwill,
        "granted_by": credit.granted_by,
        "created_at": credit.created_at.isoformat(),
    }


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None
