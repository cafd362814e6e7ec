"""What happens after the engineer chooses the service method: each method's steps, pure (no clock, no I/O).

A case's fulfilment is a `Record` (method, step, data). The desk (an engineer's action) and the engine (a
customer's message) give it an event; the functions here answer with a `Change`: the new record, what the
customer is told (replies rendered from `templates/<lang>/fulfilment.j2`), the audit row's action and detail,
and whether the case closes. The caller applies a Change in the same transaction as the rest of the step.

Steps and their allowed transitions (`TRANSITIONS`), per method:

    factory repair (M3)    awaiting_shipment -> in_transit -> received -> diagnosed -> repaired -> shipped_back (closes)
    remote guidance (M2)   parts_pending -> parts_shipped -> guiding -> confirming -> done (closes) | guiding
    door to door (M4)      slots_proposed -> visit_booked -> visited (closes); slots proposed again at any time
    discount (M5)          credited (the engineer closes)
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Any

from bot.conversation import Choice, Reply
from bot.understanding import fold

TEMPLATE = "fulfilment"
MAX_SLOTS = 6
MAX_FIELD = 2000
MAX_PICK_CHARS = 40  # longer messages while slots are offered are not taken for a (failed) pick


class Step(StrEnum):
    # factory repair (M3)
    awaiting_shipment = "awaiting_shipment"  # the customer is to ship the unit to the factory
    in_transit = "in_transit"  # the customer shipped it (carrier, tracking)
    received = "received"
    diagnosed = "diagnosed"
    repaired = "repaired"
    shipped_back = "shipped_back"
    # remote guidance (M2)
    parts_pending = "parts_pending"  # the engineer lists the parts and ships them
    parts_shipped = "parts_shipped"
    guiding = "guiding"
    confirming = "confirming"  # the customer is asked whether it is fixed
    done = "done"
    # door to door (M4)
    slots_proposed = "slots_proposed"  # the customer picks a visit slot
    visit_booked = "visit_booked"
    visited = "visited"
    # discount compensation (M5)
    credited = "credited"
    # cargo compensation orders (M1): no service; the customer was told why, once
    no_service = "no_service"


FIRST_STEP: Mapping[str, Step] = {
    "factory_repair": Step.awaiting_shipment,
    "remote_guidance": Step.parts_pending,
    "door_to_door": Step.slots_proposed,
    "discount_compensation": Step.credited,
}

# Who the step waits on: the customer's steps are reminded to the customer, the others to the engineers.
WAITS_ON_CUSTOMER = frozenset({Step.awaiting_shipment, Step.confirming, Step.slots_proposed})
FINAL = frozenset({Step.shipped_back, Step.done, Step.visited, Step.no_service})

# Engineer's actions: (method, step it may start from) -> the step it leads to.
TRANSITIONS: Mapping[str, Mapping[str, tuple[tuple[Step, ...], Step]]] = {
    "factory_repair": {
        "shipped_in": (
            (Step.awaiting_shipment,),
            Step.in_transit,
        ),  # the customer's shipment, typed by a person
        "received": ((Step.awaiting_shipment, Step.in_transit), Step.received),
        "diagnosed": ((Step.received,), Step.diagnosed),
        "repaired": ((Step.diagnosed,), Step.repaired),
        "shipped_back": ((Step.repaired,), Step.shipped_back),
    },
    "remote_guidance": {
        "parts": ((Step.parts_pending,), Step.parts_pending),
        "parts_shipped": ((Step.parts_pending,), Step.parts_shipped),
        "guide": ((Step.parts_pending, Step.parts_shipped, Step.guiding, Step.confirming), Step.guiding),
        "ask_fixed": ((Step.parts_shipped, Step.guiding), Step.confirming),
    },
    "door_to_door": {
        "slots": ((Step.slots_proposed, Step.visit_booked), Step.slots_proposed),
        "visit_report": ((Step.visit_booked,), Step.visited),
    },
    "discount_compensation": {},
}
# What each action needs typed (the desk's one text field; Slack's modal): None when nothing.
INPUTS: Mapping[str, str | None] = {
    "shipped_in": "carrier and tracking number, e.g. DHL 1234567890",
    "received": None,
    "diagnosed": "the diagnosis (the customer reads it)",
    "repaired": None,
    "shipped_back": "carrier and tracking number of the return, e.g. DHL 1234567890",
    "parts": "the parts to send, one per line",
    "parts_shipped": "carrier and tracking number, e.g. DHL 1234567890",
    "guide": "the repair instructions (the customer reads them)",
    "ask_fixed": None,
    "slots": "visit slots, one per line: YYYY-MM-DD HH:MM",
    "visit_report": "the technician's report",
}
ACTION_LABELS: Mapping[str, str] = {
    "shipped_in": "Customer shipped (tracking)",
    "received": "Unit received",
    "diagnosed": "Diagnosed",
    "repaired": "Repaired",
    "shipped_back": "Shipped back (tracking)",
    "parts": "Parts to send",
    "parts_shipped": "Parts shipped (tracking)",
    "guide": "Send repair guidance",
    "ask_fixed": "Ask the customer: fixed?",
    "slots": "Propose visit slots",
    "visit_report": "Technician's report",
}
STEP_LABELS: Mapping[str, str] = {
    "awaiting_shipment": "Waiting for the customer to ship",
    "in_transit": "On its way to the factory",
    "received": "Received at the factory",
    "diagnosed": "Diagnosed",
    "repaired": "Repaired",
    "shipped_back": "Shipped back",
    "parts_pending": "Parts to send",
    "parts_shipped": "Parts shipped",
    "guiding": "Guided repair",
    "confirming": "Asked the customer: fixed?",
    "done": "Fixed",
    "slots_proposed": "Visit slots proposed",
    "visit_booked": "Visit booked",
    "visited": "Visited",
    "credited": "Credit recorded",
    "no_service": "No service: cargo compensation order (M1), customer told",
}


class FulfilmentError(ValueError):
    """An action that does not fit the step, or input it cannot use; the desk answers 4xx with the text."""


@dataclass(frozen=True, kw_only=True)
class Terms:
    """The settings the steps use: the factory's return address, packing notes, RMA prefix, SLAs."""

    rma_prefix: str = "RMA"
    return_address: str = ""
    packing_note: str = ""
    ship_reminder_days: int = 7  # a customer who has not shipped is reminded after this many days
    sla_hours: Mapping[str, float] = field(default_factory=dict)  # per engineer step; none: no reminder


@dataclass(frozen=True, kw_only=True)
class Record:
    method: str
    step: Step
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Change:
    record: Record
    replies: tuple[Reply, ...] = ()
    action: str = ""  # the audit row's action ("fulfilment_<action>")
    detail: Mapping[str, Any] = field(default_factory=dict)
    closes: bool = False
    offered: tuple[str, ...] | None = None  # button values the customer may answer with (by number too)


def rma_number(case_ref: str, terms: Terms) -> str:
    """RMA-2026-000042 for case WR-2026-000042: one per case, readable on the parcel."""
    _, _, rest = case_ref.partition("-")
    return f"{terms.rma_prefix}-{rest or case_ref}"


def start(
    method: str,
    *,
    case_ref: str,
    terms: Terms,
    credits: Sequence[Mapping[str, Any]] = (),
    goodwill: str | None = None,
) -> Change | None:
    """The first step of `method`, and what the customer is told; None for a method with no steps.

    A method given outside the warranty (`goodwill`: goodwill or chargeable) never says "as the warranty
    provides": its freight is simply the customer's."""
    first = FIRST_STEP.get(method)
    if first is None:
        return None
    if method == "factory_repair":
        rma = rma_number(case_ref, terms)
        record = Record(method=method, step=first, data={"rma": rma})
        reply = _reply(
            "ship_to_factory",
            rma=rma,
            address=terms.return_address.strip(),
            packing_note=terms.packing_note.strip(),
            goodwill=goodwill,
        )
        return Change(record=record, replies=(reply,), action="started", detail={"step": first, "rma": rma})
    if method == "discount_compensation":
        record = Record(method=method, step=first, data={"credits": [dict(c) for c in credits]})
        return Change(
            record=record, action="started", detail={"step": first, "credits": [dict(c) for c in credits]}
        )
    return Change(record=Record(method=method, step=first), action="started", detail={"step": first})


def cargo_refusal(orders: Sequence[Mapping[str, Any]], *, reason: str) -> Change:
    """A refusal that rests on cargo compensation (M1) alone: the customer is told once, plainly, that the
    order took extra pieces instead of after-sales service; `orders`: order_id, order_pieces, cargo_pieces."""
    listed = [dict(o) for o in orders]
    return Change(
        record=Record(method="cargo_compensation", step=Step.no_service, data={"orders": listed}),
        replies=(_reply("cargo", orders=listed, reason=reason),),
        action="no_service",
        detail={"step": Step.no_service.value, "orders": listed},
    )


def allowed_actions(record: Record) -> tuple[str, ...]:
    """The engineer's actions from the record's step, in their order."""
    return tuple(
        a for a, (sources, _) in TRANSITIONS.get(record.method, {}).items() if record.step in sources
    )


def engineer_action(record: Record, action: str, text: str = "") -> Change:
    """An engineer's step; the input is the one text field the action needs (`INPUTS`)."""
    rule = TRANSITIONS.get(record.method, {}).get(action)
    if rule is None:
        raise FulfilmentError(f"{action} is not a step of {record.method}")
    sources, target = rule
    if record.step not in sources:
        allowed = ", ".join(allowed_actions(record)) or "none"
        raise FulfilmentError(f"{action} does not follow {record.step} (next: {allowed})")
    text = (text or "").strip()[:MAX_FIELD]
    if INPUTS.get(action) and not text:
        raise FulfilmentError(f"{action} needs {INPUTS[action]}")
    data = dict(record.data)
    replies: list[Reply] = []
    detail: dict[str, Any] = {"step": [record.step.value, target.value]}
    offered: tuple[str, ...] | None = None
    if action in ("shipped_in", "shipped_back", "parts_shipped"):
        carrier, number = _tracking_input(text)
        key = {"shipped_in": "inbound", "shipped_back": "return", "parts_shipped": "parts_tracking"}[action]
        data[key] = {"carrier": carrier, "tracking": number}
        detail.update(carrier=carrier, tracking=number)
        if action == "shipped_in":
            replies.append(_reply("shipment_noted", carrier=carrier, tracking=number, rma=data.get("rma")))
        elif action == "shipped_back":
            replies.append(_reply("shipped_back", carrier=carrier, tracking=number, rma=data.get("rma")))
        else:
            replies.append(
                _reply("parts_shipped", carrier=carrier, tracking=number, parts=list(data.get("parts", ())))
            )
    elif action == "received":
        replies.append(_reply("received", rma=data.get("rma")))
    elif action == "diagnosed":
        data["diagnosis"] = text
        detail["diagnosis"] = text
        replies.append(_reply("diagnosed", rma=data.get("rma"), text=text))
    elif action == "repaired":
        replies.append(_reply("repaired", rma=data.get("rma")))
    elif action == "parts":
        parts = [line.strip() for line in text.splitlines() if line.strip()][:50]
        data["parts"] = parts
        detail["parts"] = parts
        replies.append(_reply("parts_listed", parts=parts))
    elif action == "guide":
        data["guidance"] = [*data.get("guidance", ()), text][-50:]
        detail["text"] = text
        replies.append(_reply("guidance", text=text))
    elif action == "ask_fixed":
        replies.append(
            _reply(
                "ask_fixed",
                choices=(
                    Choice(label="fixed_yes", value="answer:yes"),
                    Choice(label="fixed_no", value="answer:no"),
                ),
            )
        )
        offered = ("answer:yes", "answer:no")
    elif action == "slots":
        slots = parse_slots(text)
        data["slots"] = slots
        data.pop("booked", None)
        data.pop("reminded_visit", None)
        detail["slots"] = slots
        choices = tuple(
            Choice(label="visit_slot", value=f"slot:{n}", params={"when": s}) for n, s in enumerate(slots, 1)
        )
        replies.append(_reply("slots", slots=slots, choices=choices))
        offered = tuple(c.value for c in choices)
    elif action == "visit_report":
        data["report"] = text
        detail["report"] = text
        replies.append(_reply("visited", booked=data.get("booked")))
    return Change(
        record=replace(record, step=target, data=data),
        replies=tuple(replies),
        action=action,
        detail=detail,
        closes=target in FINAL,
        offered=offered,
    )


def customer_message(record: Record, text: str, *, answer: str | None = None) -> Change | None:
    """What a customer's message does to the fulfilment: None when it is only for the engineers to read."""
    if record.step is Step.awaiting_shipment:
        found = read_tracking(text)
        if found is None:
            return None
        carrier, number = found
        data = {**record.data, "inbound": {"carrier": carrier, "tracking": number}}
        return Change(
            record=replace(record, step=Step.in_transit, data=data),
            replies=(_reply("shipment_noted", carrier=carrier, tracking=number, rma=record.data.get("rma")),),
            action="shipped_in",
            detail={
                "step": [record.step.value, Step.in_transit.value],
                "carrier": carrier,
                "tracking": number,
                "by": "customer",
            },
        )
    if record.step is Step.slots_proposed:
        slots = list(record.data.get("slots", ()))
        picked = pick_slot(text, slots)
        if picked is None:
            if not slots or len(text.strip()) > MAX_PICK_CHARS:
                return None  # a longer message is for the engineers ("can the technician bring a ladder?")
            choices = tuple(
                Choice(label="visit_slot", value=f"slot:{n}", params={"when": s})
                for n, s in enumerate(slots, 1)
            )
            return Change(
                record=record,
                replies=(_reply("slot_reask", slots=slots, choices=choices),),
                offered=tuple(c.value for c in choices),
            )
        booked = slots[picked]
        return Change(
            record=replace(record, step=Step.visit_booked, data={**record.data, "booked": booked}),
            replies=(_reply("visit_booked", booked=booked),),
            action="slot_picked",
            detail={"step": [record.step.value, Step.visit_booked.value], "booked": booked, "by": "customer"},
            offered=(),
        )
    if record.step is Step.confirming:
        said = "yes" if text == "answer:yes" else "no" if text == "answer:no" else answer
        if said == "yes":
            return Change(
                record=replace(record, step=Step.done),
                replies=(_reply("fixed"),),
                action="fixed",
                detail={"step": [record.step.value, Step.done.value], "by": "customer"},
                closes=True,
                offered=(),
            )
        if said == "no":
            return Change(
                record=replace(record, step=Step.guiding),
                replies=(_reply("not_fixed"),),
                action="not_fixed",
                detail={"step": [record.step.value, Step.guiding.value], "by": "customer"},
                offered=(),
            )
    return None


@dataclass(frozen=True, kw_only=True)
class Reminder:
    kind: str  # "customer" (a message to the customer) or "engineer" (an alert to the desks)
    key: str  # what was reminded, so that it is reminded once: the step, or "visit"
    reply: Reply | None = None


def due(
    record: Record, *, since: datetime, now: datetime, reminded: Sequence[str], terms: Terms
) -> list[Reminder]:
    """The reminders due for a record whose step began at `since`; `reminded`: the keys already sent."""
    found: list[Reminder] = []
    step = record.step
    if step in FINAL or step is Step.credited:
        return found
    waited = now - since
    if (
        step is Step.awaiting_shipment
        and step.value not in reminded
        and waited >= timedelta(days=terms.ship_reminder_days)
    ):
        found.append(
            Reminder(
                kind="customer",
                key=step.value,
                reply=_reply(
                    "ship_reminder", rma=record.data.get("rma"), address=terms.return_address.strip()
                ),
            )
        )
    if step is Step.visit_booked and "visit" not in reminded and record.data.get("booked"):
        visit = datetime.fromisoformat(str(record.data["booked"]))
        if now.date() >= visit.date() - timedelta(days=1) and now.date() <= visit.date():
            found.append(
                Reminder(
                    kind="customer", key="visit", reply=_reply("visit_reminder", booked=record.data["booked"])
                )
            )
    hours = terms.sla_hours.get(step.value)
    if (
        hours is not None
        and step not in WAITS_ON_CUSTOMER
        and f"sla:{step.value}" not in reminded
        and waited >= timedelta(hours=hours)
    ):
        found.append(Reminder(kind="engineer", key=f"sla:{step.value}"))
    return found


# --- reading what people type -------------------------------------------------------------------------------

# Carriers as customers name them (folded); the name shown is the value.
CARRIERS: Mapping[str, str] = {
    "dhl": "DHL",
    "fedex": "FedEx",
    "fed ex": "FedEx",
    "ups": "UPS",
    "tnt": "TNT",
    "ems": "EMS",
    "usps": "USPS",
    "aramex": "Aramex",
    "dpd": "DPD",
    "gls": "GLS",
    "sf express": "SF Express",
    "顺丰": "SF Express",
    "中通": "ZTO",
    "zto": "ZTO",
    "圆通": "YTO",
    "yto": "YTO",
    "申通": "STO",
    "韵达": "Yunda",
    "京东": "JD Logistics",
    "中国邮政": "China Post",
    "china post": "China Post",
    "邮政": "China Post",
    "correos": "Correos",
    "correios": "Correios",
    "chronopost": "Chronopost",
    "colissimo": "Colissimo",
    "la poste": "La Poste",
    "cdek": "CDEK",
    "сдэк": "CDEK",
    "почта россии": "Russian Post",
    "почтой россии": "Russian Post",
    "деловые линии": "Dellin",
    "maersk": "Maersk",
    "schenker": "DB Schenker",
    "kuehne": "Kuehne+Nagel",
    "royal mail": "Royal Mail",
    "estafeta": "Estafeta",
    "servientrega": "Servientrega",
    "smsa": "SMSA",
    "jadlog": "Jadlog",
    "geodis": "Geodis",
    "fedex express": "FedEx",
    "ctt": "CTT",
}
# Words that say a number is a tracking number, in the seven languages (folded: no accents, lower case).
TRACKING_WORDS = (
    "tracking",
    "track",
    "waybill",
    "awb",
    "shipped",
    "sent it",
    "seguimiento",
    "rastreo",
    "guia",
    "envie",
    "enviado",
    "enviamos",
    "运单",
    "单号",
    "快递",
    "物流",
    "寄出",
    "已寄",
    "发货",
    "трек",
    "отслеживан",
    "накладн",
    "отправил",
    "rastreio",
    "rastreamento",
    "codigo de rastre",
    "enviei",
    "despachei",
    "suivi",
    "envoye",
    "expedie",
    "lettre de transport",
    "تتبع",
    "بوليصة",
    "شحنت",
    "أرسلت",
    "ارسلت",
    "رقم الشحنة",
)
_CANDIDATE = re.compile(r"(?<![A-Za-z0-9])([A-Za-z0-9][A-Za-z0-9\-]{6,38}[A-Za-z0-9])(?![A-Za-z0-9])")
_SERIAL_LIKE = re.compile(r"^[A-Z]{2,4}\d{2}(?:0[1-9]|1[0-2])[A-Z0-9]{4,8}$")  # policy serial_pattern
_CASE_REF = re.compile(r"^[A-Z]{2,5}-?\d{4}-?\d{6}$")


def read_tracking(text: str) -> tuple[str | None, str] | None:
    """(carrier, tracking number) from a customer's free text, or None when it names no shipment.

    A tracking number is a run of 8 to 40 letters and digits with at least 6 digits that is neither one of our
    serials nor a case or RMA reference; it counts when a carrier is named or a word says it is a tracking
    number ("número de seguimiento", "运单号", "трек-номер", …).
    """
    plain = unicodedata.normalize("NFKC", text)
    folded = fold(plain)
    carrier = _carrier(folded)
    if carrier is None and not any(word in folded for word in _TRACKING_WORDS):
        return None
    numbers = [m.group(1).upper() for m in _CANDIDATE.finditer(plain)]
    numbers = [
        n
        for n in numbers
        if sum(c.isdigit() for c in n) >= 6
        and not _SERIAL_LIKE.match(n.replace("-", ""))
        and not _CASE_REF.match(n)
    ]
    if not numbers:
        return None
    return carrier, max(numbers, key=lambda n: sum(c.isdigit() for c in n))


def _carrier(folded: str) -> str | None:
    found = []
    for name, shown in _CARRIERS.items():
        if name.isascii():
            match = re.search(rf"(?<![a-z0-9]){re.escape(name)}(?![a-z0-9])", folded)
        else:
            match = re.search(re.escape(name), folded)
        if match:
            found.append((match.start(), -len(name), shown))
    return min(found)[2] if found else None


def _tracking_input(text: str) -> tuple[str | None, str]:
    """What an engineer typed for a shipment: "DHL 1234567890" (or only the number)."""
    found = read_tracking(text)
    if found is not None:
        return found
    tokens = text.split()
    number = max(tokens, key=lambda t: sum(c.isdigit() for c in t), default="")
    if sum(c.isdigit() for c in number) < 4:
        raise FulfilmentError("give the carrier and the tracking number, e.g. DHL 1234567890")
    carrier = " ".join(t for t in tokens if t != number)[:40] or None
    return carrier, number[:40]


_SLOT = re.compile(r"^\s*(\d{4}-\d{2}-\d{2})[ T](\d{1,2}):(\d{2})\s*$")


def parse_slots(text: str) -> list[str]:
    """Visit slots, one per line `YYYY-MM-DD HH:MM` (the customer's local time), as ISO `YYYY-MM-DDTHH:MM`."""
    slots: list[str] = []
    for line in (raw for raw in text.splitlines() if raw.strip()):
        match = _SLOT.match(line)
        if not match:
            raise FulfilmentError(f"a slot must be YYYY-MM-DD HH:MM, one per line: {line.strip()[:40]!r}")
        try:
            when = datetime.fromisoformat(f"{match.group(1)}T{int(match.group(2)):02d}:{match.group(3)}")
        except ValueError:
            raise FulfilmentError(f"not a date and time: {line.strip()[:40]!r}") from None
        slots.append(when.isoformat(timespec="minutes"))
    if not slots:
        raise FulfilmentError("give at least one slot")
    if len(slots) > MAX_SLOTS:
        raise FulfilmentError(f"at most {MAX_SLOTS} slots")
    return list(dict.fromkeys(slots))


# Ordinals ("the second one"), weekdays and parts of the day, per language, folded.
ORDINALS: Mapping[int, tuple[str, ...]] = {
    1: (
        "first",
        "1st",
        "primero",
        "primera",
        "primer",
        "первый",
        "первая",
        "первое",
        "первого",
        "primeiro",
        "primeira",
        "premier",
        "premiere",
        "الأول",
        "الاول",
        "الأولى",
        "الاولى",
        "第一",
        "头一个",
    ),
    2: (
        "second",
        "2nd",
        "segundo",
        "segunda",
        "второй",
        "вторая",
        "второе",
        "второго",
        "deuxieme",
        "second",
        "seconde",
        "الثاني",
        "الثانية",
        "第二",
    ),
    3: (
        "third",
        "3rd",
        "tercero",
        "tercera",
        "tercer",
        "третий",
        "третья",
        "третье",
        "третьего",
        "terceiro",
        "terceira",
        "troisieme",
        "الثالث",
        "الثالثة",
        "第三",
    ),
    4: (
        "fourth",
        "4th",
        "cuarto",
        "cuarta",
        "четвертый",
        "четвёртый",
        "четвертая",
        "quarto",
        "quarta",
        "quatrieme",
        "الرابع",
        "الرابعة",
        "第四",
    ),
    5: ("fifth", "5th", "quinto", "quinta", "пятый", "пятая", "cinquieme", "الخامس", "الخامسة", "第五"),
    6: ("sixth", "6th", "sexto", "sexta", "шестой", "шестая", "sixieme", "السادس", "السادسة", "第六"),
}
ORDINAL_LAST = ("last", "ultimo", "ultima", "последний", "последняя", "dernier", "derniere", "الأخير", "最后")
# Monday is 0. Portuguese "segunda", "quarta"… are also ordinals: as weekdays only with "-feira".
WEEKDAYS: Mapping[int, tuple[str, ...]] = {
    0: (
        "monday",
        "lunes",
        "понедельник",
        "segunda-feira",
        "segunda feira",
        "lundi",
        "الاثنين",
        "الإثنين",
        "周一",
        "星期一",
        "礼拜一",
    ),
    1: (
        "tuesday",
        "martes",
        "вторник",
        "terca-feira",
        "terca feira",
        "terca",
        "mardi",
        "الثلاثاء",
        "周二",
        "星期二",
        "礼拜二",
    ),
    2: (
        "wednesday",
        "miercoles",
        "сред",
        "quarta-feira",
        "quarta feira",
        "mercredi",
        "الأربعاء",
        "الاربعاء",
        "周三",
        "星期三",
        "礼拜三",
    ),
    3: (
        "thursday",
        "jueves",
        "четверг",
        "quinta-feira",
        "quinta feira",
        "jeudi",
        "الخميس",
        "周四",
        "星期四",
        "礼拜四",
    ),
    4: (
        "friday",
        "viernes",
        "пятниц",
        "sexta-feira",
        "sexta feira",
        "vendredi",
        "الجمعة",
        "周五",
        "星期五",
        "礼拜五",
    ),
    5: ("saturday", "sabado", "суббот", "samedi", "السبت", "周六", "星期六", "礼拜六"),
    6: (
        "sunday",
        "domingo",
        "воскресень",
        "dimanche",
        "الأحد",
        "الاحد",
        "周日",
        "星期日",
        "星期天",
        "周天",
        "礼拜天",
    ),
}
MORNING = ("morning", "a.m.", " am", "manana", "утр", "manha", "matin", "صباح", "上午", "早上", "早晨")
AFTERNOON = (
    "afternoon",
    "evening",
    "p.m.",
    " pm",
    "tarde",
    "днем",
    "днём",
    "после обеда",
    "вечер",
    "apres-midi",
    "apres midi",
    "soir",
    "مساء",
    "بعد الظهر",
    "下午",
    "晚上",
)


def _folded(words: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(w if w.startswith(" ") else fold(w) for w in words))


_CARRIERS = {fold(name): shown for name, shown in CARRIERS.items()}
_TRACKING_WORDS = _folded(TRACKING_WORDS)
_ORDINALS = {n: _folded(words) for n, words in ORDINALS.items()}
_ORDINAL_LAST = _folded(ORDINAL_LAST)
_WEEKDAYS = {d: _folded(words) for d, words in WEEKDAYS.items()}
_MORNING = _folded(MORNING)
_AFTERNOON = _folded(AFTERNOON)
_DIGITS = re.compile(r"(?<![0-9])([0-9])(?![0-9])")


def pick_slot(text: str, slots: Sequence[str]) -> int | None:
    """The index of the slot a customer picked: a button, a number, an ordinal ("第二个", "the second"), or a
    weekday and part of the day ("周三上午", "el miércoles por la tarde") that fits one slot only."""
    if not slots:
        return None
    plain = unicodedata.normalize("NFKC", text).strip()
    if plain.startswith("slot:"):
        value = plain.removeprefix("slot:")
        return int(value) - 1 if value.isdigit() and 1 <= int(value) <= len(slots) else None
    folded = " " + fold(plain) + " "
    chinese = re.search(r"第\s*([0-9一二三四五六])\s*(?:个|個|项|項|号|號)?", plain)
    if chinese:
        value = chinese.group(1)
        number = int(value) if value.isdigit() else "一二三四五六".index(value) + 1
        return number - 1 if 1 <= number <= len(slots) else None
    if re.fullmatch(r"[0-9]{1,2}", plain) or re.fullmatch(
        r"(?:#|no\.?|n[°º]|№)\s*[0-9]{1,2}", folded.strip()
    ):
        number = int(re.sub(r"[^0-9]", "", plain))
        return number - 1 if 1 <= number <= len(slots) else None
    weekday = next((d for d, words in _WEEKDAYS.items() if any(w in folded for w in words)), None)
    ordinal = None
    if weekday is None or "feira" not in folded:
        for nth, words in _ORDINALS.items():
            if any(
                re.search(rf"(?<![\w]){re.escape(w)}(?![\w])", folded) if w.isascii() else w in folded
                for w in words
            ):
                ordinal = nth
                break
    if ordinal is None and any(w in folded for w in _ORDINAL_LAST):
        ordinal = len(slots)
    if ordinal is not None and weekday is None:
        return ordinal - 1 if 1 <= ordinal <= len(slots) else None
    part = (
        "am" if any(w in folded for w in _MORNING) else "pm" if any(w in folded for w in _AFTERNOON) else None
    )
    if weekday is None and part is None:
        digit = _DIGITS.findall(plain)
        if len(digit) == 1 and 1 <= int(digit[0]) <= len(slots) and len(plain) <= 20:
            return int(digit[0]) - 1  # "the 2 please", "2号"
        return None
    fitting = [
        i
        for i, slot in enumerate(slots)
        if (weekday is None or datetime.fromisoformat(slot).weekday() == weekday)
        and (part is None or (datetime.fromisoformat(slot).hour < 12) == (part == "am"))
    ]
    return fitting[0] if len(fitting) == 1 else None


def slot_date(slot: str) -> date:
    return datetime.fromisoformat(slot).date()


def parse_sla(text: str) -> dict[str, float]:
    """`received=48,diagnosed=72` (hours per step) as a mapping; a bad entry is a ValueError."""
    hours: dict[str, float] = {}
    for item in (part.strip() for part in text.split(",") if part.strip()):
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in Step.__members__:
            raise ValueError(f"unknown step {name!r} (steps: {', '.join(Step.__members__)})")
        try:
            hours[name] = float(value)
        except ValueError:
            raise ValueError(f"hours for {name} must be a number: {value!r}") from None
        if hours[name] < 0:
            raise ValueError(f"hours for {name} must not be negative")
    return hours


def _reply(step: str, *, choices: tuple[Choice, ...] = (), **params: Any) -> Reply:
    return Reply(template=TEMPLATE, params={"step": step, **params}, choices=choices)
