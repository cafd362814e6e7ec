"""The templates' contexts for rendering every customer text in every language (tests/test_i18n.py,
tests/test_customer_texts.py): sample values of every variable, and the variables and macros a template uses."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import jinja2
from jinja2 import meta

from bot.conversation import LANGUAGES
from bot.render import TEMPLATES, Renderer
from policy import Circumstances, Claim, Proof, default_policy, evaluate

POLICY = default_policy()
RENDERER = Renderer(POLICY)
TRANSLATED = tuple(language for language in LANGUAGES if language != "en")
SOURCE = RENDERER.env  # the renderer's own environment: same loader, syntax options and StrictUndefined
ENGLISH = sorted(path.stem for path in (TEMPLATES / "en").glob("*.j2") if path.stem != "labels")
# Names the renderer puts in every template's context itself (bot/render.py Renderer._context).
RENDERER_NAMES = frozenset(
    {
        "lang",
        "policy",
        "reasons",
        "other_reasons",
        "clause",
        "meanings",
        "date",
        "weekday",
        "money",
        "number",
        "months",
        "percent",
    }
)


def variables(language: str, template: str) -> set[str]:
    assert SOURCE.loader is not None
    source = SOURCE.loader.get_source(SOURCE, f"{language}/{template}.j2")[0]
    return set(meta.find_undeclared_variables(SOURCE.parse(source)))


# --- realistic contexts ---------------------------------------------------------------------------------

TODAY = date(2026, 3, 2)


def sample_decision(serial: str, **claim: Any) -> Any:
    return evaluate(Claim(serial=serial, claim_date=TODAY, **claim), POLICY)


COVERED = sample_decision("CSP2402A0153", port_arrival_date=date(2024, 4, 10), proof=Proof.registry)
REVIEW = sample_decision("CSP2402A0154", port_arrival_date=date(2023, 12, 1), proof=Proof.registry)
PRELIMINARY = sample_decision(
    "CSP2402A0155",
    port_arrival_date=date(2024, 4, 10),
    proof=Proof.registry,
    circumstances=Circumstances(human_damage=True),
)
EXPIRED = sample_decision("CSP2001A0001")
# M1 refusals: the order's extra pieces known, not known, and with an exclusion besides on an expired unit.
CARGO = sample_decision("CSP2402A0156", port_arrival_date=date(2024, 4, 10), proof=Proof.registry,
                        cargo_compensation=True, order_pieces=1000)  # fmt: skip
CARGO_UNKNOWN_PIECES = sample_decision("CSP2402A0157", cargo_compensation=True)
CARGO_MISUSE = sample_decision("CSP2001A0002", cargo_compensation=True, order_pieces=40,
                               circumstances=Circumstances(misuse=True))  # fmt: skip


def decision_group(decision: Any, *serials: str) -> dict[str, Any]:
    return {"decision": decision, "serials": list(serials), "preliminary": decision.preliminary}


SERIALS = [f"CSP2402A{n:04d}" for n in range(100, 112)]

# One realistic value per variable any English template uses: a template with a new variable fails
# test_every_template_renders_in_every_language until a value is added here.
VALUES: dict[str, Any] = {
    "engineer": "Li Wei",
    "case_ref": "WR-2026-000042",
    "question": "Could you send a photo of the label on the unit?",
    "covered": 12,
    "discounts": [{"order_id": "PO-88123", "amount": Decimal("1250.00"), "currency": "USD"}],
    "unregistered": ["CSP2402A0153"],
    "count": 1,
    "files": [{"name": "invoice.docx", "reason": "wrong_type"}],
    "max_mb": 10,
    "offer_human": False,
    "added": True,
    "clause": "L1",
    "units": 1,
    "groups": [decision_group(COVERED, "CSP2402A0153")],
    "text": "Please check the DC breaker and send me a photo of the display.",
    "state": "awaiting_fault",
    "case_status": "open",
    "serials": ["CSP2402A0153"],
    "registered": [],
    "amount": Decimal("1250.00"),
    "currency": "USD",
    "clauses": ["X5"],
    "reason": "The housing shows impact damage.",
    "error": "CSP2402A0149 to CSP2402A0100: the range runs backwards",
    "max_units": 1000,
    "attempt": "CSP24XX",
    "fault": "Display shows E07 and shuts down",
    "stated": 2,
    "typed": "CSP2402A0135",
    "suggested": "CSP2402A0153",
    "refused": True,
    "review": False,
    "documents_help": True,
    "cargo": False,
    "method": "factory_repair",
    # fulfilment (bot/fulfilment.py): one realistic value per step's variable
    "step": "ship_to_factory",
    "rma": "RMA-2026-000042",
    "address": "Warranty returns, Building 3\n88 Chuangye Road, Ningbo 315000, China",
    "packing_note": "Pallets must be shrink-wrapped.",
    "carrier": "DHL",
    "tracking": "1234567890",
    "parts": ["Control board CB-7", "DC fuse 20 A"],
    "slots": ["2026-12-09T09:00", "2026-12-10T14:30"],
    "booked": "2026-12-09T09:00",
    "goodwill": None,
    "orders": [{"order_id": "PO-24-0117", "order_pieces": 1000, "cargo_pieces": 10}],
    "credits": [{"order_id": "PO-88123", "amount": Decimal("250.00"), "currency": "USD"}],
}

# The branches of each template, as changes to the base context.
VARIANTS: dict[str, list[dict[str, Any]]] = {
    "ask_preference": [
        {"discounts": []},
        {
            "discounts": [
                *VALUES["discounts"],
                {"order_id": "PO-88200", "amount": Decimal("80.5"), "currency": "EUR"},
            ]
        },
    ],
    "ask_proof": [
        {"count": 3, "unregistered": SERIALS[:3]},
        {"count": 3, "unregistered": SERIALS[:1], "serials": SERIALS[:3]},
    ],
    "attachment_rejected": [
        {
            "files": [
                {"name": "video.mp4", "reason": "too_large"},
                {"name": "notes.docx", "reason": "wrong_type"},
            ]
        }
    ],
    "cause_reask": [{"offer_human": True}],
    "confirm_serials": [{"stated": None, "count": 3, "serials": SERIALS[:3]}],
    "next_steps": [{"refused": False}, {"documents_help": False}],
    "refusal_case_opened": [{"cargo": True}, {"documents_help": False}],
    "decision": [
        {
            "units": 10,
            "groups": [
                decision_group(COVERED, *SERIALS[:7]),
                decision_group(REVIEW, "CSP2402A0154"),
                decision_group(PRELIMINARY, "CSP2402A0155"),
                decision_group(EXPIRED, "CSP2001A0001"),
            ],
        },
        {"units": 1, "groups": [decision_group(EXPIRED, "CSP2001A0001")]},
        {
            "units": 3,
            "groups": [
                decision_group(CARGO, "CSP2402A0156"),
                decision_group(CARGO_UNKNOWN_PIECES, "CSP2402A0157"),
                decision_group(CARGO_MISUSE, "CSP2001A0002"),
            ],
        },
    ],
    "fault_added": [{"added": False}],
    "fault_reask": [{"offer_human": True}],
    "help": [{"case_ref": None}],
    "fulfilment": [
        {"step": step}
        for step in (
            "shipment_noted",
            "received",
            "diagnosed",
            "repaired",
            "shipped_back",
            "parts_listed",
            "parts_shipped",
            "guidance",
            "ask_fixed",
            "fixed",
            "not_fixed",
            "slots",
            "slot_reask",
            "visit_booked",
            "visit_reminder",
            "visited",
            "ship_reminder",
            "credit_available",
            "cargo",
        )
    ]
    + [
        {"address": "", "packing_note": ""},
        {"goodwill": "chargeable"},
        {"step": "ship_reminder", "address": ""},
        {"step": "shipment_noted", "carrier": None},
        {"step": "cargo", "orders": [{"order_id": "PO-9", "order_pieces": None, "cargo_pieces": None}]},
    ],
    "method_discount_compensation": [{"amount": None}],
    "method_goodwill": [
        {"method": "remote_guidance"},
        {"method": "door_to_door"},
        {"method": "discount_compensation"},
        {"method": "discount_compensation", "amount": None},
    ],
    "method_chargeable": [{"method": "remote_guidance"}, {"method": "door_to_door"}],
    "method_not_covered": [{"clauses": []}],
    "preference_reask": [{"offer_human": True}],
    "proof_reask": [{"offer_human": True}],
    "relayed": [{"case_status": "claimed"}],
    "serial_reask": [{"attempt": None}, {"offer_human": True}],
    "status": [
        *(
            {"case_status": status}
            for status in ("claimed", "waiting_customer", "in_service", "resolved", "closed", "archived")
        ),
        {"case_ref": None, "state": "new"},
        {"case_ref": None, "serials": SERIALS[:3]},
        {"case_ref": None, "serials": []},
    ],
    "units_received": [
        {"registered": ["CSP2402A0153"]},
        {"count": 12, "serials": SERIALS, "registered": SERIALS[:1]},
        {"count": 12, "serials": SERIALS, "registered": SERIALS[:3]},
        {"count": 2, "serials": SERIALS[:2], "registered": []},
    ],
}


# Replies whose parameter shares its name with a renderer function (bot/conversation.py passes "clause": "L1").
SHADOWING: dict[str, set[str]] = {"consequential_damages": {"clause"}}


def contexts(template: str) -> list[dict[str, Any]]:
    """The base context built from the English template's variables, then each of its branches."""
    names = variables("en", template)
    missing = sorted(name for name in names if name not in VALUES and name not in RENDERER_NAMES)
    assert not missing, f"add realistic values for {missing} (templates/en/{template}.j2) to VALUES"
    # A name the renderer provides is a parameter only where the conversation passes it as one.
    shadowing = SHADOWING.get(template, set())
    base = {
        name: VALUES[name]
        for name in names
        if name in VALUES and (name not in RENDERER_NAMES or name in shadowing)
    }
    return [base, *({**base, **change} for change in VARIANTS.get(template, []))]


# --- templates ------------------------------------------------------------------------------------------


def macros(language: str) -> dict[str, Any]:
    module = SOURCE.get_template(f"{language}/labels.j2").module
    return {name: value for name, value in vars(module).items() if isinstance(value, jinja2.runtime.Macro)}
