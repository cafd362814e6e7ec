"""The customer's dialogue as a pure state machine: (state, event, facts) -> (state', replies, effects).

No clock, no I/O, no randomness: today's date, registry records and the case's status come in as `Facts`;
what must happen in the world (open a case, relay a message, record a rating) goes out as effects.

States: new -> awaiting_serial -> awaiting_fault -> awaiting_proof -> screening -> [preference]
        -> with_engineer -> closed. Global commands work in every state.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from decimal import Decimal
from typing import Any, Literal

from policy import (
    Circumstances,
    Claim,
    Decision,
    Outcome,
    Policy,
    Proof,
    SerialRangeError,
    evaluate_units,
    find_serials,
    looks_like_serial_attempt,
    normalize_serial,
    parse_serial,
)

StateName = Literal[
    "new",
    "awaiting_serial",
    "awaiting_fault",
    "awaiting_proof",
    "screening",
    "preference",
    "with_engineer",
    "closed",
]
MAX_FAILURES = 3
LANGUAGES = ("en", "zh", "es", "ru", "pt", "fr", "ar")

# Answers to "how did the fault arise?", as the circumstances they establish (POLICY.md X4–X7).
CAUSES: Mapping[str, Circumstances] = {
    "normal": Circumstances(misuse=False, human_damage=False, force_majeure=False, unauthorized_repair=False),
    "damage": Circumstances(human_damage=True),
    "misuse": Circumstances(misuse=True),
    "repair": Circumstances(unauthorized_repair=True),
    "disaster": Circumstances(force_majeure=True),
    "unsure": Circumstances(),
}

# Global commands, by the words customers type for them (English here; other languages add their words).
COMMAND_WORDS: Mapping[str, str] = {
    "help": "help",
    "/help": "help",
    "?": "help",
    "menu": "help",
    "status": "status",
    "/status": "status",
    "human": "human",
    "/human": "human",
    "agent": "human",
    "engineer": "human",
    "person": "human",
    "operator": "human",
    "talk to a person": "human",
    "talk to a human": "human",
    "restart": "restart",
    "/restart": "restart",
    "start over": "restart",
    "reset": "restart",
    "language": "language",
    "/language": "language",
    "/start": "start",
    "start": "start",
    "hi": "start",
    "hello": "start",
    "帮助": "help",
    "状态": "status",
    "人工": "human",
    "重新开始": "restart",
    "语言": "language",
    "ayuda": "help",
    "estado": "status",
    "humano": "human",
    "reiniciar": "restart",
    "idioma": "language",
    "помощь": "help",
    "статус": "status",
    "оператор": "human",
    "заново": "restart",
    "язык": "language",
    "ajuda": "help",
    "atendente": "human",
    "recomeçar": "restart",
    "aide": "help",
    "statut": "status",
    "humain": "human",
    "recommencer": "restart",
    "langue": "language",
    "مساعدة": "help",
    "الحالة": "status",
    "موظف": "human",
    "إعادة": "restart",
    "اللغة": "language",
}

# Requests for consequential damages (clause L1), in the languages customers use.
_CONSEQUENTIAL = re.compile(
    r"lost profits?|loss of (profit|income|revenue|business|data)|consequential|compensat\w* for (the )?"
    r"(downtime|loss|losses|time)|work stoppage|downtime|data loss|lost (income|revenue|business)"
    r"|lucro cesante|pérdidas? de (beneficios|ganancias|ingresos)|упущенн\w+ выгод\w*|убытк\w*"
    r"|lucros cessantes|perte d'exploitation|manque à gagner|pertes? de (profit|revenus)"
    r"|利润损失|间接损失|停工损失|赔偿损失|الأرباح الضائعة|خسارة الأرباح",
    re.IGNORECASE,
)
_RATING = re.compile(r"^\s*(?:rate:)?([1-5])\s*(?:/\s*5)?\s*[*★⭐]*\s*$")
_MIN_FAULT_CHARS = 8
_OPTION_NUMBER = re.compile(r"[0-9]{1,2}")  # not str.isdigit(): "²" is a digit to it
_RANGE_WORDS = frozenset({"-", "–", "—", "to", "..", "and", "&", "~", "至", "a", "à", "до", "até"})


@dataclass(frozen=True, kw_only=True)
class UnitFacts:
    """What the shipment registry knows about one serial."""

    serial: str
    order_id: str
    production_date: date | None = None
    port_arrival_date: date | None = None
    cargo_compensation: bool = False
    order_pieces: int | None = None
    order_total: Decimal | None = None
    currency: str | None = None


@dataclass(frozen=True, kw_only=True)
class Facts:
    """Everything from outside the conversation that a step may need."""

    today: date
    policy: Policy
    registry: Mapping[str, UnitFacts] = field(default_factory=dict)
    case_ref: str | None = None
    case_status: str | None = None
    # The language the customer's text is in, when it is clear and not the one in use (None otherwise).
    detected_language: str | None = None


@dataclass(frozen=True, kw_only=True)
class Event:
    """What the customer did: text (a button press arrives as its value) and stored attachment ids."""

    text: str = ""
    attachment_ids: tuple[int, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Choice:
    """A button to offer: `label` names a macro in the language's labels template."""

    label: str
    value: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Reply:
    """A message to the customer, as a template name and its context; rendered by the shell."""

    template: str
    params: Mapping[str, Any] = field(default_factory=dict)
    choices: tuple[Choice, ...] = ()
    language: str | None = None  # render in this language instead of the conversation's


@dataclass(frozen=True, kw_only=True)
class UnitDecision:
    serial: str
    model: str | None
    production_date: date | None
    port_arrival_date: date | None
    registered: bool
    order_id: str | None
    decision: Decision
    # The facts the decision was taken on, kept with the case so that an engineer's correction re-decides.
    claim: Claim | None = None


@dataclass(frozen=True, kw_only=True)
class OpenCase:
    """Open a case for the desk; the shell assigns its reference and fills `case_ref` into the replies."""

    units: tuple[UnitDecision, ...]
    fault: str
    claim_date: date
    prefers_discount: bool
    attachment_ids: tuple[int, ...]
    human_requested: bool = False


@dataclass(frozen=True, kw_only=True)
class RelayToCase:
    text: str
    attachment_ids: tuple[int, ...] = ()


@dataclass(frozen=True, kw_only=True)
class RecordRating:
    rating: int


@dataclass(frozen=True, kw_only=True)
class SetLanguage:
    language: str


Effect = OpenCase | RelayToCase | RecordRating | SetLanguage


@dataclass(frozen=True, kw_only=True)
class State:
    """One conversation's state; `to_dict`/`from_dict` store it as JSON."""

    name: StateName = "new"
    language: str = "en"
    serials: tuple[str, ...] = ()
    fault: str = ""
    proof: str | None = None
    cause: str | None = None
    prefers_discount: bool | None = None
    claim_date: date | None = None
    attachment_ids: tuple[int, ...] = ()
    failures: int = 0
    offered: tuple[str, ...] = ()
    awaiting_rating: bool = False
    languages_offered: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "language": self.language,
            "serials": list(self.serials),
            "fault": self.fault,
            "proof": self.proof,
            "cause": self.cause,
            "prefers_discount": self.prefers_discount,
            "claim_date": self.claim_date.isoformat() if self.claim_date else None,
            "attachment_ids": list(self.attachment_ids),
            "failures": self.failures,
            "offered": list(self.offered),
            "awaiting_rating": self.awaiting_rating,
            "languages_offered": list(self.languages_offered),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> State:
        if not data:
            return cls()
        claim_date = data.get("claim_date")
        return cls(
            name=data.get("name", "new"),
            language=data.get("language", "en"),
            serials=tuple(data.get("serials", ())),
            fault=data.get("fault", ""),
            proof=data.get("proof"),
            cause=data.get("cause"),
            prefers_discount=data.get("prefers_discount"),
            claim_date=date.fromisoformat(claim_date) if claim_date else None,
            attachment_ids=tuple(data.get("attachment_ids", ())),
            failures=data.get("failures", 0),
            offered=tuple(data.get("offered", ())),
            awaiting_rating=data.get("awaiting_rating", False),
            languages_offered=tuple(data.get("languages_offered", ())),
        )


@dataclass(frozen=True, kw_only=True)
class Transition:
    state: State
    replies: tuple[Reply, ...] = ()
    effects: tuple[Effect, ...] = ()


# --- the step ------------------------------------------------------------------------------------------


def step(state: State, event: Event, facts: Facts) -> Transition:
    """Advance the conversation by one customer event."""
    return _offer_language(_step(state, event, facts), facts)


def _offer_language(transition: Transition, facts: Facts) -> Transition:
    """A message in another language than the chosen one does not switch it: the bot offers to, once."""
    detected, state = facts.detected_language, transition.state
    if detected is None or detected == state.language or detected in state.languages_offered:
        return transition
    # Numbers typed on channels without buttons refer to the last message's options: these.
    choices = (
        Choice(label=f"language_{detected}", value=f"lang:{detected}"),
        Choice(label=f"language_{state.language}", value=f"lang:{state.language}"),
    )
    offer = Reply(template="language_offer", choices=choices, language=detected)
    state = replace(
        state, languages_offered=(*state.languages_offered, detected), offered=tuple(c.value for c in choices)
    )
    return Transition(state=state, replies=(*transition.replies, offer), effects=transition.effects)


def _step(state: State, event: Event, facts: Facts) -> Transition:
    text = _resolve_numbered_choice(state, event.text.strip())
    if event.attachment_ids:
        state = replace(state, attachment_ids=state.attachment_ids + event.attachment_ids)

    command = _command(text)
    if command is not None:
        return _global(command, state, facts)
    if text.startswith("lang:"):
        return _set_language(state, text.removeprefix("lang:"), facts)

    if state.name == "with_engineer":
        return _with_engineer(state, text, event, facts)
    if state.name == "closed" and state.awaiting_rating:
        rating = _RATING.match(text)
        if rating:
            return _t(
                replace(state, awaiting_rating=False),
                Reply(template="rating_thanks"),
                effects=(RecordRating(rating=int(rating.group(1))),),
            )

    if _CONSEQUENTIAL.search(text):
        consequential = Reply(template="consequential_damages", params={"clause": "L1"})
        followup = _ask_again(state, facts)
        return Transition(state=state, replies=(consequential, *followup.replies))

    handler = _HANDLERS[state.name]
    return handler(state, text, event, facts)


def on_case_closed(state: State, *, ask_rating: bool) -> State:
    """The desk closed the customer's case: the conversation is free for a new claim."""
    return replace(State(language=state.language), name="closed", awaiting_rating=ask_rating)


def on_case_reopened(state: State) -> State:
    return replace(state, name="with_engineer", awaiting_rating=False)


# --- global commands -----------------------------------------------------------------------------------


def _command(text: str) -> str | None:
    lowered = text.lower().strip(" .!¡¿?")
    if text.startswith("cmd:"):
        return text.removeprefix("cmd:")
    return COMMAND_WORDS.get(lowered) or COMMAND_WORDS.get(lowered.split("@")[0])


def _global(command: str, state: State, facts: Facts) -> Transition:
    if command == "help":
        return _t(
            state,
            Reply(template="help", params=_status_params(state, facts)),
            *_ask_again(state, facts).replies,
        )
    if command == "status":
        return _t(state, Reply(template="status", params=_status_params(state, facts)))
    if command == "human":
        return _human(state, facts)
    if command == "language":
        choices = tuple(Choice(label=f"language_{code}", value=f"lang:{code}") for code in LANGUAGES)
        return _t(
            replace(state, offered=tuple(c.value for c in choices)),
            Reply(template="language_choose", choices=choices),
        )
    if command == "start" and state.name not in ("new", "closed"):
        return _t(
            state,
            Reply(template="status", params=_status_params(state, facts)),
            *_ask_again(state, facts).replies,
        )
    # restart, or start from scratch
    fresh = State(language=state.language, name="awaiting_serial", claim_date=facts.today)
    if state.name == "with_engineer" and command == "restart":
        template = "restarted_case_kept"
    else:
        template = "restarted" if command == "restart" else "greeting"
    return _t(fresh, Reply(template=template, params={"case_ref": facts.case_ref}), _ask_serial())


def _set_language(state: State, language: str, facts: Facts) -> Transition:
    if language not in LANGUAGES:
        return _t(
            state,
            Reply(
                template="language_choose",
                choices=tuple(Choice(label=f"language_{c}", value=f"lang:{c}") for c in LANGUAGES),
            ),
        )
    new_state = replace(state, language=language, offered=())
    effects: tuple[Effect, ...] = (SetLanguage(language=language),)
    if state.name in ("new", "closed", "with_engineer"):
        return Transition(state=new_state, replies=(Reply(template="language_set"),), effects=effects)
    # The question still open, asked again in the new language.
    pending = _ask_again(new_state, facts)
    return Transition(
        state=pending.state, replies=(Reply(template="language_set"), *pending.replies), effects=effects
    )


def _status_params(state: State, facts: Facts) -> dict[str, Any]:
    return {
        "state": state.name,
        "case_ref": facts.case_ref,
        "case_status": facts.case_status,
        "serials": list(state.serials),
        "fault": state.fault,
    }


def _human(state: State, facts: Facts) -> Transition:
    if state.name == "with_engineer":
        return Transition(
            state=state,
            replies=(Reply(template="human_already", params={"case_ref": facts.case_ref}),),
            effects=(RelayToCase(text="[customer asked for a person]"),),
        )
    units = tuple(_decide(state, facts)) if state.serials else ()
    effect = OpenCase(
        units=units,
        fault=state.fault,
        claim_date=state.claim_date or facts.today,
        prefers_discount=bool(state.prefers_discount),
        attachment_ids=state.attachment_ids,
        human_requested=True,
    )
    return Transition(
        state=replace(state, name="with_engineer", offered=()),
        replies=(Reply(template="human_requested"),),
        effects=(effect,),
    )


# --- states --------------------------------------------------------------------------------------------


def _new(state: State, text: str, event: Event, facts: Facts) -> Transition:
    fresh = replace(
        State(language=state.language, attachment_ids=state.attachment_ids),
        name="awaiting_serial",
        claim_date=facts.today,
    )
    if find_serials(text, facts.policy) or _range_error(text, facts.policy):
        return _awaiting_serial(fresh, text, event, facts)
    return _t(fresh, Reply(template="greeting"), _ask_serial())


def _closed(state: State, text: str, event: Event, facts: Facts) -> Transition:
    return _new(replace(state, awaiting_rating=False), text, event, facts)


def _awaiting_serial(state: State, text: str, event: Event, facts: Facts) -> Transition:
    error = _range_error(text, facts.policy)
    if error is not None:
        return _t(
            state,
            Reply(
                template="serial_range_error",
                params={"error": error, "max_units": facts.policy.max_range_units},
            ),
        )
    serials = find_serials(text, facts.policy)
    if not serials:
        if event.attachment_ids and not text:
            return _t(state, Reply(template="attachment_received"), _ask_serial())
        return _failed(state, "serial_reask", {"attempt": _attempt_excerpt(text, facts.policy)})
    state = replace(state, serials=tuple(dict.fromkeys(state.serials + tuple(serials))), failures=0)
    fault = _fault_in(text, facts.policy)
    received = Reply(template="units_received", params=_units_params(state, facts))
    if fault:
        following = _after_fault(replace(state, fault=fault), facts)
        return Transition(
            state=following.state, replies=(received, *following.replies), effects=following.effects
        )
    return _t(replace(state, name="awaiting_fault", offered=()), received, Reply(template="ask_fault"))


def _awaiting_fault(state: State, text: str, event: Event, facts: Facts) -> Transition:
    more = find_serials(text, facts.policy)
    rest = _fault_in(text, facts.policy)
    if more and not rest:
        state = replace(state, serials=tuple(dict.fromkeys(state.serials + tuple(more))))
        return _t(
            state,
            Reply(template="units_received", params=_units_params(state, facts)),
            Reply(template="ask_fault"),
        )
    if len(text) < _MIN_FAULT_CHARS:
        if event.attachment_ids and not text:
            return _t(state, Reply(template="attachment_received"), Reply(template="ask_fault"))
        return _failed(state, "fault_reask", {})
    return _after_fault(replace(state, fault=text, failures=0), facts)


def _after_fault(state: State, facts: Facts) -> Transition:
    if all(serial in facts.registry for serial in state.serials):
        return _ask_cause(replace(state, proof=Proof.registry.value))
    if state.proof is not None:
        return _ask_cause(state)
    choices = _proof_choices(state)
    return _t(
        replace(state, name="awaiting_proof", offered=tuple(c.value for c in choices), failures=0),
        Reply(template="ask_proof", params=_units_params(state, facts), choices=choices),
    )


def _proof_choices(state: State) -> tuple[Choice, ...]:
    # Files sent before the question may already be the invoice: the customer can say so.
    sent = (Choice(label="proof_sent", value="proof:sent"),) if state.attachment_ids else ()
    return (*sent, Choice(label="proof_none", value="proof:none"))


def _awaiting_proof(state: State, text: str, event: Event, facts: Facts) -> Transition:
    if event.attachment_ids or (text == "proof:sent" and state.attachment_ids):
        return _ask_cause(replace(state, proof=Proof.documents.value), Reply(template="proof_received"))
    if text == "proof:none" or text.lower() in {
        "no",
        "none",
        "nope",
        "no invoice",
        "没有",
        "нет",
        "não",
        "non",
        "لا",
    }:
        return _ask_cause(replace(state, proof=Proof.none.value))
    return _failed(state, "proof_reask", {})


def _ask_cause(state: State, *before: Reply) -> Transition:
    choices = tuple(Choice(label=f"cause_{cause}", value=f"cause:{cause}") for cause in CAUSES)
    return _t(
        replace(state, name="screening", offered=tuple(c.value for c in choices), failures=0),
        *before,
        Reply(template="ask_cause", choices=choices),
    )


def _screening(state: State, text: str, event: Event, facts: Facts) -> Transition:
    cause = text.removeprefix("cause:") if text.startswith("cause:") else None
    if cause not in CAUSES:
        if event.attachment_ids and not text:
            return _t(state, Reply(template="attachment_received"), *_ask_cause(state).replies)
        return _failed(state, "cause_reask", {}, choices=_ask_cause(state).replies[-1].choices)
    state = replace(state, cause=cause, failures=0, offered=())
    covered = [unit for unit in _decide(state, facts) if unit.decision.outcome is Outcome.covered]
    if len(covered) >= facts.policy.discount_min_units and state.prefers_discount is None:
        choices = (
            Choice(label="prefer_repair", value="pref:repair"),
            Choice(label="prefer_discount", value="pref:discount"),
        )
        return _t(
            replace(state, name="preference", offered=tuple(c.value for c in choices)),
            Reply(
                template="ask_preference",
                params={"covered": len(covered), "discounts": _discounts(covered, facts)},
                choices=choices,
            ),
        )
    return _conclude(state, facts)


def _preference(state: State, text: str, event: Event, facts: Facts) -> Transition:
    if text not in ("pref:repair", "pref:discount"):
        choices = (
            Choice(label="prefer_repair", value="pref:repair"),
            Choice(label="prefer_discount", value="pref:discount"),
        )
        return _failed(state, "preference_reask", {}, choices=choices)
    return _conclude(replace(state, prefers_discount=text == "pref:discount", offered=()), facts)


def _conclude(state: State, facts: Facts) -> Transition:
    units = tuple(_decide(state, facts))
    explained = Reply(template="decision", params={"groups": _groups(units), "units": len(units)})
    needs_engineer = any(
        u.decision.outcome is not Outcome.not_covered or u.decision.preliminary for u in units
    )
    if not needs_engineer:
        choices = (Choice(label="talk_to_person", value="cmd:human"),)
        return _t(
            replace(state, name="closed", offered=tuple(c.value for c in choices)),
            explained,
            Reply(template="not_covered_final", choices=choices),
        )
    effect = OpenCase(
        units=units,
        fault=state.fault,
        claim_date=state.claim_date or facts.today,
        prefers_discount=bool(state.prefers_discount),
        attachment_ids=state.attachment_ids,
    )
    return Transition(
        state=replace(state, name="with_engineer", offered=()),
        replies=(explained, Reply(template="case_opened", params={"units": len(units)})),
        effects=(effect,),
    )


def _with_engineer(state: State, text: str, event: Event, facts: Facts) -> Transition:
    if not text and not event.attachment_ids:
        return Transition(state=state)
    effect = RelayToCase(text=text, attachment_ids=event.attachment_ids)
    if facts.case_status in (None, "open"):
        reply = Reply(
            template="relayed", params={"case_ref": facts.case_ref, "case_status": facts.case_status}
        )
        return Transition(state=state, replies=(reply,), effects=(effect,))
    return Transition(state=state, effects=(effect,))


_HANDLERS = {
    "new": _new,
    "awaiting_serial": _awaiting_serial,
    "awaiting_fault": _awaiting_fault,
    "awaiting_proof": _awaiting_proof,
    "screening": _screening,
    "preference": _preference,
    "closed": _closed,
}


# --- helpers -------------------------------------------------------------------------------------------


def _t(state: State, *replies: Reply, effects: tuple[Effect, ...] = ()) -> Transition:
    return Transition(state=state, replies=replies, effects=effects)


def _ask_serial() -> Reply:
    return Reply(template="ask_serial")


def _ask_again(state: State, facts: Facts) -> Transition:
    """The question the customer still owes us an answer to, asked again."""
    if state.name in ("new", "awaiting_serial", "closed"):
        return _t(state, _ask_serial())
    if state.name == "awaiting_fault":
        return _t(state, Reply(template="ask_fault"))
    if state.name == "awaiting_proof":
        return _t(
            state,
            Reply(
                template="ask_proof",
                params=_units_params(state, facts),
                choices=_proof_choices(state),
            ),
        )
    if state.name == "screening":
        return _ask_cause(state)
    if state.name == "preference":
        return _t(
            state,
            Reply(
                template="preference_reask",
                choices=(
                    Choice(label="prefer_repair", value="pref:repair"),
                    Choice(label="prefer_discount", value="pref:discount"),
                ),
            ),
        )
    return _t(state)


def _failed(
    state: State, template: str, params: Mapping[str, Any], choices: tuple[Choice, ...] = ()
) -> Transition:
    """A polite re-ask; from the third failed try on, a person is offered as well."""
    failures = state.failures + 1
    if failures >= MAX_FAILURES:
        choices = (*choices, Choice(label="talk_to_person", value="cmd:human"))
    state = replace(state, failures=failures, offered=tuple(c.value for c in choices) or state.offered)
    return _t(
        state,
        Reply(template=template, params={**params, "offer_human": failures >= MAX_FAILURES}, choices=choices),
    )


def _resolve_numbered_choice(state: State, text: str) -> str:
    """On channels without buttons the customer answers with the option's number."""
    if _OPTION_NUMBER.fullmatch(text) and state.offered and 1 <= int(text) <= len(state.offered):
        return state.offered[int(text) - 1]
    return text


def _range_error(text: str, policy: Policy) -> str | None:
    try:
        find_serials(text, policy)
    except SerialRangeError as error:
        return str(error)
    return None


def _attempt_excerpt(text: str, policy: Policy) -> str | None:
    if not looks_like_serial_attempt(text):
        return None
    token = max(text.split(), key=len)
    return normalize_serial(token)[:40]


def _fault_in(text: str, policy: Policy) -> str:
    """The part of a message that describes the fault, once serials and the words joining them are taken out."""
    words = [w for w in re.split(r"\s+", text) if w.strip(",;:.()[]")]
    is_serial = [bool(find_serials(w.strip(",;:.()[]"), policy)) for w in words]
    kept = []
    for index, word in enumerate(words):
        between_serials = 0 < index < len(words) - 1 and is_serial[index - 1] and is_serial[index + 1]
        if is_serial[index] or (between_serials and word.lower() in _RANGE_WORDS):
            continue
        kept.append(word)
    rest = " ".join(kept).strip(" ,;:-–")
    return rest if len(rest) >= _MIN_FAULT_CHARS and len(kept) >= 2 else ""


def _units_params(state: State, facts: Facts) -> dict[str, Any]:
    return {
        "serials": list(state.serials),
        "count": len(state.serials),
        "registered": [s for s in state.serials if s in facts.registry],
        "unregistered": [s for s in state.serials if s not in facts.registry],
    }


def _decide(state: State, facts: Facts) -> list[UnitDecision]:
    circumstances = CAUSES.get(state.cause or "unsure", Circumstances())
    claim_date = state.claim_date or facts.today
    claims = []
    for serial in state.serials:
        record = facts.registry.get(serial)
        # The registry's record proves the sale; otherwise what the customer showed us, or nothing.
        proof = Proof.registry if record is not None else Proof(state.proof or Proof.none.value)
        claims.append(
            Claim(
                serial=serial,
                claim_date=claim_date,
                port_arrival_date=record.port_arrival_date if record else None,
                production_date=record.production_date if record else None,
                proof=proof,
                circumstances=circumstances,
                cargo_compensation=record.cargo_compensation if record else False,
                order_id=record.order_id if record else None,
                order_pieces=record.order_pieces if record else None,
                order_total=record.order_total if record else None,
                currency=record.currency if record else None,
                prefers_discount=bool(state.prefers_discount),
            )
        )
    # Two passes (POLICY.md): M5 counts the covered units; the discount is on one unit per order.
    decided = []
    for claim, decision in zip(claims, evaluate_units(claims, facts.policy), strict=True):
        parsed = parse_serial(claim.serial, facts.policy)
        decided.append(
            UnitDecision(
                serial=claim.serial,
                model=parsed.model if parsed else None,
                production_date=decision.production_date,
                port_arrival_date=claim.port_arrival_date,
                registered=claim.serial in facts.registry,
                order_id=claim.order_id,
                decision=decision,
                claim=claim,
            )
        )
    return decided


def _discounts(units: list[UnitDecision], facts: Facts) -> list[dict[str, Any]]:
    """The discount each order would get (M5), one line per order: the amounts the decisions carry."""
    return [
        {"order_id": unit.order_id, "amount": unit.decision.discount_amount, "currency": unit.claim.currency}
        for unit in units
        if unit.decision.discount_amount is not None and unit.order_id is not None and unit.claim is not None
    ]


def _groups(units: tuple[UnitDecision, ...]) -> list[dict[str, Any]]:
    """Units with the same decision, together: a distributor's 40 units read as one or two lines."""
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for unit in units:
        d = unit.decision
        key = (d.outcome, d.basis, d.warranty_start, d.warranty_end, d.clauses, d.methods, d.discount_amount)
        group = groups.setdefault(key, {"decision": d, "serials": [], "preliminary": d.preliminary})
        group["serials"].append(unit.serial)
    return list(groups.values())
