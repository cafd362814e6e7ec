"""The customer's dialogue as a pure state machine: (state, event, facts) -> (state', replies, effects).

No clock, no I/O, no randomness: today's date, registry records and the case's status come in as `Facts`;
what must happen in the world (open a case, relay a message, record a rating) goes out as effects.

States: new -> awaiting_serial -> awaiting_fault -> awaiting_proof -> screening -> [preference]
        -> with_engineer -> closed. `STATES` (at the end) is the table of them: each state's handler beside
the question it asks and asks again. Before the state's handler, `FALLBACKS` in order: a command, a language
switch, the consequential-damages limit (an aside: said, then the turn goes on), a global request (a person,
the status, restart, help). What the desk does to a conversation comes in as events too (`on_case_closed`,
`on_rating_asked`); files the shell could not keep come with the Event.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from functools import cached_property
from typing import Any, Literal

from bot.understanding import Lexicon, Reading, default_lexicon, fold, understand
from policy import (
    Circumstances,
    Claim,
    Decision,
    Outcome,
    Policy,
    Proof,
    UnitFacts,
    evaluate_units,
    looks_like_serial_attempt,
    normalize_serial,
    parse_serial,
    unit_claim,
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

# Answers to "how did the fault arise?", as the circumstances they establish (docs/policy.md, X4–X7).
CAUSES: Mapping[str, Circumstances] = {
    "normal": Circumstances(misuse=False, human_damage=False, force_majeure=False, unauthorized_repair=False),
    "damage": Circumstances(human_damage=True),
    "misuse": Circumstances(misuse=True),
    "repair": Circumstances(unauthorized_repair=True),
    "disaster": Circumstances(force_majeure=True),
    "unsure": Circumstances(),
}

# Written variants of a language, chosen from a channel's hint (pt-PT); detection and menus use the base language.
VARIANTS = ("pt_PT",)


def base_language(language: str) -> str:
    """The language of a variant: "pt_PT" -> "pt"; a plain language stays as it is."""
    return language.split("_")[0]


# Option values: what a button (or its number, or its label typed back) stands for.
HUMAN = "cmd:human"
YES = "answer:yes"
NO = "answer:no"
PROOF_SENT = "proof:sent"
PROOF_NONE = "proof:none"
PREFER_REPAIR = "pref:repair"
PREFER_DISCOUNT = "pref:discount"
RATINGS = (1, 2, 3, 4, 5)


def cause_value(cause: str) -> str:
    return f"cause:{cause}"


def language_value(language: str) -> str:
    return f"lang:{language}"


def rating_value(rating: int) -> str:
    return f"rate:{rating}"


# How many serials one claim may hold (all ranges and messages together), unless the shell says otherwise.
MAX_CLAIM_UNITS = 1000
# How long the fault description of a claim grows from what the customer adds before the case opens.
MAX_FAULT_CHARS = 4000
_MIN_FAULT_CHARS = 3
_OPTION_NUMBER = re.compile(r"[0-9]{1,2}")  # not str.isdigit(): "²" is a digit to it
_VALUE = re.compile(r"^(?:cmd|lang|cause|proof|pref|answer|rate|slot):[a-z0-9_]+$")


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
    lexicon: Lexicon = field(default_factory=default_lexicon)
    # The offered buttons' labels as customers may type them back (folded text -> option value).
    labels: Mapping[str, str] = field(default_factory=dict)
    # Serials typed that the registry does not hold, and the one registry serial a typo away from each.
    suggestions: Mapping[str, str] = field(default_factory=dict)
    max_units: int = MAX_CLAIM_UNITS
    # The conversation's last case once it is closed (follow-ups re-open it).
    last_case_ref: str | None = None
    attachment_max_mb: int = 10  # named when a file is refused for its size


@dataclass(frozen=True, kw_only=True)
class Event:
    """What the customer did: text (a button press arrives as its value) and stored attachment ids."""

    text: str = ""
    attachment_ids: tuple[int, ...] = ()
    # Files the shell could not keep, as (name, reason): the customer is told first.
    rejected: tuple[tuple[str, str], ...] = ()


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
    """Add the customer's message to their case; `reopen`: the case was closed and opens again for it."""

    text: str
    attachment_ids: tuple[int, ...] = ()
    reopen: bool = False


@dataclass(frozen=True, kw_only=True)
class RecordRating:
    rating: int


@dataclass(frozen=True, kw_only=True)
class SetLanguage:
    language: str


@dataclass(frozen=True, kw_only=True)
class LeaveCase:
    """The customer started again while with the engineers: the case stays theirs, the conversation is free."""


Effect = OpenCase | RelayToCase | RecordRating | SetLanguage | LeaveCase


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
    # A reading to confirm before going on: {"kind": "serials", "serials": [...]} or
    # {"kind": "suggestion", "typed": ..., "suggested": ...}.
    confirm: Mapping[str, Any] | None = None
    unit_faults: Mapping[str, str] = field(default_factory=dict)  # a pasted table's fault per serial
    # The case whose "I've added this to case ..." the customer has read: later messages are added quietly.
    acknowledged: str | None = None

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
            "confirm": dict(self.confirm) if self.confirm else None,
            "unit_faults": dict(self.unit_faults),
            "acknowledged": self.acknowledged,
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
            confirm=data.get("confirm"),
            unit_faults=dict(data.get("unit_faults") or {}),
            acknowledged=data.get("acknowledged"),
        )


@dataclass(frozen=True, kw_only=True)
class Transition:
    state: State
    replies: tuple[Reply, ...] = ()
    effects: tuple[Effect, ...] = ()


# --- the step ------------------------------------------------------------------------------------------


def step(state: State, event: Event, facts: Facts) -> Transition:
    """Advance the conversation by one customer event."""
    transition = _offer_language(_step(state, event, facts), facts)
    if state.name == "with_engineer" and transition.state.name != "with_engineer":
        transition = _with(transition, effects=(LeaveCase(),))
    if event.rejected:
        files = [{"name": name, "reason": reason} for name, reason in event.rejected]
        rejected = Reply(
            template="attachment_rejected", params={"files": files, "max_mb": facts.attachment_max_mb}
        )
        transition = Transition(
            state=transition.state, replies=(rejected, *transition.replies), effects=transition.effects
        )
    return transition


def label_name(value: str) -> str | None:
    """The labels-template macro that names an option value on a person's screen (`cause:normal` -> …)."""
    kind, _, key = value.partition(":")
    names = {
        "cmd": {"human": "talk_to_person"},
        "answer": {"yes": "answer_yes", "no": "answer_no"},
        "proof": {"sent": "proof_sent", "none": "proof_none"},
        "pref": {"repair": "prefer_repair", "discount": "prefer_discount"},
    }
    if kind == "cause" and key in CAUSES:
        return f"cause_{key}"
    if kind == "lang" and key in LANGUAGES:
        return f"language_{key}"
    return names.get(kind, {}).get(key)


def _offer_language(transition: Transition, facts: Facts) -> Transition:
    """A message in another language than the chosen one does not switch it: the bot offers to, once."""
    detected, state = facts.detected_language, transition.state
    current = base_language(state.language)
    if detected is None or detected == current or detected in state.languages_offered:
        return transition
    # Numbers typed on channels without buttons refer to the last message's options: these.
    choices = (
        Choice(label=f"language_{detected}", value=language_value(detected)),
        Choice(label=f"language_{current}", value=language_value(state.language)),
    )
    offer = Reply(template="language_offer", choices=choices, language=detected)
    state = replace(
        state, languages_offered=(*state.languages_offered, detected), offered=tuple(c.value for c in choices)
    )
    return Transition(state=state, replies=(*transition.replies, offer), effects=transition.effects)


@dataclass(kw_only=True)
class _Turn:
    """One customer event in one state; the text is read (understood) only when a fallback or handler asks."""

    state: State
    text: str
    event: Event
    facts: Facts

    @cached_property
    def reading(self) -> Reading:
        return _read(self.text, self.facts)


def _command(turn: _Turn) -> Transition | None:
    """A command's button (`cmd:human`), in any state."""
    if not turn.text.startswith("cmd:"):
        return None
    return _global(
        turn.text.removeprefix("cmd:"), turn.state, Reading(text=turn.text), turn.event, turn.facts
    )


def _language_switch(turn: _Turn) -> Transition | None:
    """A language's button (`lang:fr`), in any state."""
    if not turn.text.startswith("lang:"):
        return None
    return _set_language(turn.state, turn.text.removeprefix("lang:"), turn.facts)


def _global_request(turn: _Turn) -> Transition | None:
    """A person, the status, restart, help or the language menu asked for in words; a greeting mid-claim."""
    reading, state = turn.reading, turn.state
    if reading.intent in ("human", "status", "restart", "help", "language") or (
        reading.intent == "greeting" and (state.name not in ("new", "closed") and not state.awaiting_rating)
    ):
        return _global(reading.intent, state, reading, turn.event, turn.facts)
    return None


@dataclass(frozen=True, kw_only=True)
class Aside:
    """A fallback's answer that does not take the turn: said first, then the turn goes on."""

    reply: Reply


def _consequential_damages(turn: _Turn) -> Aside | None:
    """A request for lost profits or other consequential damages, in any state: the limit (clause L1)."""
    if turn.reading.consequential:
        return Aside(reply=Reply(template="consequential_damages", params={"clause": "L1"}))
    return None


# Tried in this order before the state's handler; the first that answers with a Transition takes the turn,
# an Aside is said before whatever answers.
FALLBACKS: tuple[Callable[[_Turn], Transition | Aside | None], ...] = (
    _command,
    _language_switch,
    _consequential_damages,
    _global_request,
)


def _step(state: State, event: Event, facts: Facts) -> Transition:
    text = _resolve_choice(state, event.text.strip(), facts)
    if event.attachment_ids:
        state = replace(state, attachment_ids=state.attachment_ids + event.attachment_ids)
    turn = _Turn(state=state, text=text, event=event, facts=facts)
    asides: list[Reply] = []
    answered: Transition | Aside | None = None
    for fallback in FALLBACKS:
        answered = fallback(turn)
        if isinstance(answered, Aside):
            asides.append(answered.reply)
        elif answered is not None:
            break
    transition = (
        answered
        if isinstance(answered, Transition)
        else STATES[state.name].handle(state, turn.reading, event, facts)
    )
    if not asides:
        return transition
    return Transition(
        state=transition.state, replies=(*asides, *transition.replies), effects=transition.effects
    )


def _new(state: State, reading: Reading, event: Event, facts: Facts) -> Transition:
    state = _fresh(state, facts)
    if not _says_anything(reading) and not event.attachment_ids:
        return _t(state, Reply(template="greeting"), _ask_serial())
    return _intake(state, reading, event, facts)


def _read(text: str, facts: Facts) -> Reading:
    if _VALUE.match(text):
        return _reading_of_value(text)
    if text == "?":
        return Reading(text=text, intent="help")
    return understand(text, facts.lexicon, facts.policy)


def _reading_of_value(value: str) -> Reading:
    """A button's value, as the reading of the words it stands for."""
    kind, _, key = value.partition(":")
    if kind == "cause" and key in CAUSES:
        return Reading(text=value, cause=key)  # type: ignore[arg-type]
    if kind == "proof":
        return Reading(text=value, proof="sent" if key == "sent" else "none")
    if kind == "pref" and key in ("repair", "discount"):
        return Reading(text=value, preference=key)  # type: ignore[arg-type]
    if kind == "answer" and key in ("yes", "no"):
        return Reading(text=value, answer=key)  # type: ignore[arg-type]
    if kind == "rate" and key.isdigit():
        return Reading(text=value, rating=int(key))
    return Reading(text=value)


def _says_anything(reading: Reading) -> bool:
    return bool(
        reading.serials
        or reading.range_error
        or reading.serial_attempt
        or reading.fault
        or reading.proof
        or reading.cause
        or reading.consequential
    )


def on_case_closed(state: State, *, ask_rating: bool) -> State:
    """The desk closed the customer's case: the conversation is free for a new claim."""
    return replace(State(language=state.language), name="closed", awaiting_rating=ask_rating)


def rating_choices() -> tuple[Choice, ...]:
    """The rating buttons (1 to 5), labelled with their number."""
    return tuple(Choice(label=str(n), value=rating_value(n)) for n in RATINGS)


def on_rating_asked(state: State) -> State:
    """The desk asked the customer to rate the case: a rating is awaited; after a close, numbers pick it."""
    offered = tuple(c.value for c in rating_choices()) if state.name == "closed" else state.offered
    return replace(state, awaiting_rating=True, offered=offered)


# --- global commands -----------------------------------------------------------------------------------


def _global(command: str, state: State, reading: Reading, event: Event, facts: Facts) -> Transition:
    if command == "help":
        return _t(
            state,
            Reply(template="help", params=_status_params(state, facts)),
            *_ask_again(state, facts).replies,
        )
    if command == "status":
        status = _t(state, Reply(template="status", params=_status_params(state, facts)))
        if state.name == "with_engineer" and len(reading.text.split()) > 1:
            # "Any news?" is for the engineers to read too.
            return _with(
                status, effects=(RelayToCase(text=reading.text, attachment_ids=event.attachment_ids),)
            )
        return status
    if command == "human":
        return _human(_absorb(state, reading, facts), reading, event, facts)
    if command == "language":
        choices = _language_choices()
        return _t(
            replace(state, offered=tuple(c.value for c in choices)),
            Reply(template="language_choose", choices=choices),
        )
    if command in ("start", "greeting") and state.name not in ("new", "closed"):
        return _t(
            state,
            Reply(template="status", params=_status_params(state, facts)),
            *_ask_again(state, facts).replies,
        )
    # restart, or start from scratch
    fresh = _fresh(state, facts)
    if state.name == "with_engineer" and command == "restart":
        template = "restarted_case_kept"
    else:
        template = "restarted" if command == "restart" else "greeting"
    return _t(fresh, Reply(template=template, params={"case_ref": facts.case_ref}), _ask_serial())


def _fresh(state: State, facts: Facts) -> State:
    return replace(
        State(language=state.language, attachment_ids=() if state.name != "new" else state.attachment_ids),
        name="awaiting_serial",
        claim_date=facts.today,
        languages_offered=state.languages_offered,
    )


def _set_language(state: State, language: str, facts: Facts) -> Transition:
    if language not in LANGUAGES and language not in VARIANTS:
        return _t(
            state,
            Reply(template="language_choose", choices=_language_choices()),
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


def _human(state: State, reading: Reading, event: Event, facts: Facts) -> Transition:
    """A person, at once, in any state (docs/policy.md, S1); what the customer said so far goes with the case."""
    if state.name == "with_engineer":
        return Transition(
            state=state,
            replies=(Reply(template="human_already", params={"case_ref": facts.case_ref}),),
            effects=(RelayToCase(text=reading.text or HUMAN),),
        )
    if state.name == "closed" and facts.last_case_ref:
        return Transition(
            state=replace(state, name="with_engineer", awaiting_rating=False, offered=()),
            replies=(Reply(template="case_reopened", params={"case_ref": facts.last_case_ref}),),
            effects=(RelayToCase(text=reading.text, attachment_ids=event.attachment_ids, reopen=True),),
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
        state=replace(state, name="with_engineer", offered=(), confirm=None),
        replies=(Reply(template="human_requested"),),
        effects=(effect,),
    )


# --- after the hand-off --------------------------------------------------------------------------------


def _with_engineer(state: State, reading: Reading, event: Event, facts: Facts) -> Transition:
    if not reading.text and not event.attachment_ids:
        return Transition(state=state)
    effect = RelayToCase(text=reading.text, attachment_ids=event.attachment_ids)
    if reading.intent in ("why", "complaint") and state.serials:
        # "Why?", "what can I do?": the decision's reasons again, and what the customer can still do.
        units = tuple(_decide(state, facts))
        return _t(
            state,
            Reply(template="decision", params={"groups": _groups(units), "units": len(units)}),
            Reply(template="next_steps", params=_next_step_params(units, facts)),
            effects=(effect,),
        )
    if reading.intent == "thanks" and not reading.fault:
        return _t(
            state, Reply(template="thanks_reply", params={"case_ref": facts.case_ref}), effects=(effect,)
        )
    if facts.case_status in (None, "open", "to_confirm") and (
        facts.case_ref is None or state.acknowledged != facts.case_ref
    ):
        # Acknowledged once per case; the same thanks after every message reads like a machine.
        reply = Reply(
            template="relayed", params={"case_ref": facts.case_ref, "case_status": facts.case_status}
        )
        return Transition(
            state=replace(state, acknowledged=facts.case_ref), replies=(reply,), effects=(effect,)
        )
    return Transition(state=state, effects=(effect,))


def _closed(state: State, reading: Reading, event: Event, facts: Facts) -> Transition:
    """After a closed case: a rating, thanks, a new claim, or a follow-up that re-opens the case."""
    if state.awaiting_rating and reading.rating is not None:
        return _t(
            replace(state, awaiting_rating=False),
            Reply(template="rating_thanks"),
            effects=(RecordRating(rating=reading.rating),),
        )
    state = replace(state, awaiting_rating=False)
    if reading.intent == "thanks" and not reading.fault and not reading.serials:
        return _t(state, Reply(template="thanks_reply", params={"case_ref": None}))
    if reading.serials or reading.range_error or reading.serial_attempt:
        return _intake(_fresh(state, facts), reading, event, facts)
    if facts.last_case_ref and (
        reading.fault or reading.intent in ("why", "complaint") or event.attachment_ids
    ):
        return Transition(
            state=replace(state, name="with_engineer", offered=()),
            replies=(Reply(template="case_reopened", params={"case_ref": facts.last_case_ref}),),
            effects=(RelayToCase(text=reading.text, attachment_ids=event.attachment_ids, reopen=True),),
        )
    fresh = _fresh(state, facts)
    if _says_anything(reading):
        return _intake(fresh, reading, event, facts)
    return _t(fresh, Reply(template="greeting"), _ask_serial())


# --- intake: every slot from every message -------------------------------------------------------------


def _intake(state: State, reading: Reading, event: Event, facts: Facts) -> Transition:
    """Fill what this message says into the claim, then ask for what is still missing (or decide)."""
    before = state
    said: list[Reply] = []
    if state.confirm is not None:
        confirmed = _answer_confirmation(state, reading, facts)
        if confirmed is not None:
            state, reply = confirmed
            said.extend(reply)
    state, serial_replies = _take_serials(state, reading, facts)
    said.extend(serial_replies)
    # The answer to the cause or preference question is that answer, not more of the fault.
    answered_choice = (before.name == "screening" and reading.cause is not None) or (
        before.name == "preference" and reading.preference is not None
    )
    if not answered_choice:
        state = _take_fault(
            state, reading, event, facts, asked=before.name == "awaiting_fault" and state.serials != ()
        )
    # The fault (or more of it) told while another question waits: say it was kept before asking that again.
    if state.fault != before.fault and before.name != "awaiting_fault" and not said:
        said.append(Reply(template="fault_added", params={"added": bool(before.fault)}))
    state, proof_replies = _take_proof(state, reading, event, facts, asked=before.name == "awaiting_proof")
    said.extend(proof_replies)
    # A cause said without being asked counts when it is said plainly: not "unsure", not a misspelt guess.
    volunteered = reading.cause != "unsure" and not reading.cause_repaired
    if reading.cause is not None and (before.name == "screening" or volunteered):
        state = replace(state, cause=reading.cause)
    if reading.preference is not None and (before.name == "preference" or state.cause is not None):
        state = replace(state, prefers_discount=reading.preference == "discount")
    if before.name == "preference" and reading.answer is not None and reading.preference is None:
        state = replace(state, prefers_discount=None)

    # A request for damages was answered (the L1 aside of FALLBACKS): not a failed try, the question is asked.
    answered = bool(said) or reading.consequential
    progressed = _progress(state) != _progress(before) or answered or state.confirm != before.confirm
    if not progressed and not event.attachment_ids:
        return _reask(before, reading, facts)
    if not progressed:
        said.append(Reply(template="attachment_received"))
    following = _next(replace(state, failures=0 if progressed else state.failures), facts)
    return Transition(state=following.state, replies=(*said, *following.replies), effects=following.effects)


def _progress(state: State) -> tuple[Any, ...]:
    return (
        state.serials,
        state.fault,
        state.proof,
        state.cause,
        state.prefers_discount,
        tuple(state.unit_faults.items()),
        state.attachment_ids,
    )


def _take_serials(state: State, reading: Reading, facts: Facts) -> tuple[State, list[Reply]]:
    if reading.range_error is not None:
        error = reading.range_error
        return state, [
            Reply(
                template="serial_range_error",
                params={"error": str(error), "max_units": facts.policy.max_range_units},
            )
        ]
    if not reading.serials:
        return state, []
    old = state.serials
    if reading.removed and set(reading.removed) >= set(reading.serials):
        serials = tuple(s for s in old if s not in reading.removed)
    elif reading.serial_action == "replace" or (reading.removed and old):
        kept = tuple(s for s in reading.serials if s not in reading.removed)
        serials = kept
    else:
        serials = tuple(dict.fromkeys(old + reading.serials))
    if len(serials) > facts.max_units:
        return state, [
            Reply(template="too_many_units", params={"max_units": facts.max_units, "count": len(serials)})
        ]
    state = replace(state, serials=serials, unit_faults=_unit_faults(state, reading, facts))
    # A typo that is another serial: ask before using it.
    typed = next((s for s in reading.serials if s in facts.suggestions and s in serials), None)
    if typed is not None:
        confirm = {"kind": "suggestion", "typed": typed, "suggested": facts.suggestions[typed]}
        return replace(state, confirm=confirm), []
    if reading.units_stated is not None and reading.units_stated != len(reading.serials):
        return replace(state, confirm={"kind": "serials", "stated": reading.units_stated}), []
    if serials == old:
        return state, []
    return state, [Reply(template="units_received", params=_units_params(state, facts))]


def _unit_faults(state: State, reading: Reading, facts: Facts) -> Mapping[str, str]:
    """A pasted table (a serial and its fault per line) keeps each unit's fault."""
    lines = [line for line in reading.text.splitlines() if line.strip()]
    if len(lines) < 2:
        return state.unit_faults
    faults = dict(state.unit_faults)
    for line in lines:
        line_reading = understand(line, facts.lexicon, facts.policy)
        if len(line_reading.serials) == 1 and line_reading.fault:
            faults[line_reading.serials[0]] = line_reading.fault
    return faults


def _take_fault(state: State, reading: Reading, event: Event, facts: Facts, *, asked: bool) -> State:
    if state.unit_faults and not state.fault:
        return replace(state, fault="; ".join(f"{s}: {f}" for s, f in state.unit_faults.items()))
    fault = reading.fault
    if not fault or reading.intent in ("human", "status", "restart"):
        return state
    # Asked for the fault, any description will do; volunteered, or beside a request for damages (L1), it
    # must say more than a word.
    needed = 1 if asked and not reading.consequential else 2
    enough = reading.fault_strength >= needed and len(fault) >= _MIN_FAULT_CHARS
    if not enough:
        return state
    if not state.fault:
        return replace(state, fault=fault[:MAX_FAULT_CHARS])
    added = f"{state.fault}\n{fault}"
    # What comes beside serials is added when it says more than the fault so far: "I have a problem with my
    # unit", then "serial X, the display shows E07 and it shuts down" (not "X has the same problem").
    says_more = not reading.serials or reading.fault_strength > _read(state.fault, facts).fault_strength
    if (
        fault not in state.fault
        and reading.fault_strength >= 2
        and says_more
        and len(added) <= MAX_FAULT_CHARS
    ):
        return replace(state, fault=added)
    return state


def _take_proof(
    state: State, reading: Reading, event: Event, facts: Facts, *, asked: bool
) -> tuple[State, list[Reply]]:
    if state.proof is not None and state.proof != Proof.none.value:
        return state, []
    proof = reading.proof
    if asked and reading.answer == "no" and proof is None:
        proof = "none"
    if asked and reading.answer == "yes" and proof is None:
        proof = "has"
    if asked and event.attachment_ids:
        return replace(state, proof=Proof.documents.value), [Reply(template="proof_received")]
    if proof in ("sent", "has") and state.attachment_ids and (asked or proof == "sent"):
        return replace(state, proof=Proof.documents.value), [Reply(template="proof_received")]
    if proof == "none" or (proof == "absent" and asked):
        return replace(state, proof=Proof.none.value), []
    if proof in ("sent", "has") and asked:
        return state, [Reply(template="proof_send_files")]
    return state, []


def _answer_confirmation(state: State, reading: Reading, facts: Facts) -> tuple[State, list[Reply]] | None:
    """The customer's answer to "did you mean …?" or "so that's N units?"; None when it is no answer."""
    confirm = state.confirm or {}
    if reading.serials:
        return replace(state, confirm=None), []  # they wrote the serials again: those count
    if reading.answer is None:
        return None
    state = replace(state, confirm=None)
    if confirm.get("kind") == "suggestion":
        typed, suggested = confirm["typed"], confirm["suggested"]
        if reading.answer == "yes":
            serials = tuple(dict.fromkeys(suggested if s == typed else s for s in state.serials))
            state = replace(state, serials=serials)
        return state, [Reply(template="units_received", params=_units_params(state, facts))]
    if reading.answer == "no":
        return replace(state, serials=(), unit_faults={}), []
    return state, [Reply(template="units_received", params=_units_params(state, facts))]


def _next(state: State, facts: Facts) -> Transition:
    """Ask for the first thing the claim still lacks, or decide."""
    if not state.serials:
        return _t(replace(state, name="awaiting_serial", offered=()), _ask_serial())
    if state.confirm is not None:
        return _ask_confirmation(state, facts)
    if not state.fault:
        return _t(replace(state, name="awaiting_fault", offered=()), Reply(template=_ask("awaiting_fault")))
    if state.proof is None and not all(serial in facts.registry for serial in state.serials):
        choices = _proof_choices(state)
        return _t(
            replace(state, name="awaiting_proof", offered=tuple(c.value for c in choices)),
            Reply(template=_ask("awaiting_proof"), params=_units_params(state, facts), choices=choices),
        )
    if state.proof is None:
        state = replace(state, proof=Proof.registry.value)
    if state.cause is None:
        return _ask_cause(state)
    covered = [unit for unit in _decide(state, facts) if unit.decision.outcome is Outcome.covered]
    if len(covered) >= facts.policy.discount_min_units and state.prefers_discount is None:
        choices = _preference_choices()
        return _t(
            replace(state, name="preference", offered=tuple(c.value for c in choices)),
            Reply(
                template=_ask("preference"),
                params={"covered": len(covered), "discounts": _discounts(covered, facts)},
                choices=choices,
            ),
        )
    return _conclude(state, facts)


def _ask_confirmation(state: State, facts: Facts) -> Transition:
    confirm = state.confirm or {}
    choices = (Choice(label="answer_yes", value=YES), Choice(label="answer_no", value=NO))
    if confirm.get("kind") == "suggestion":
        reply = Reply(
            template="serial_suggestion",
            params={"typed": confirm["typed"], "suggested": confirm["suggested"]},
            choices=choices,
        )
    else:
        reply = Reply(
            template="confirm_serials",
            params={**_units_params(state, facts), "stated": confirm.get("stated")},
            choices=choices,
        )
    return _t(replace(state, offered=tuple(c.value for c in choices)), reply)


def _proof_choices(state: State) -> tuple[Choice, ...]:
    # Files sent before the question may already be the invoice: the customer can say so.
    sent = (Choice(label="proof_sent", value=PROOF_SENT),) if state.attachment_ids else ()
    return (*sent, Choice(label="proof_none", value=PROOF_NONE))


def _preference_choices(state: State | None = None) -> tuple[Choice, ...]:
    return (
        Choice(label="prefer_repair", value=PREFER_REPAIR),
        Choice(label="prefer_discount", value=PREFER_DISCOUNT),
    )


def _cause_choices(state: State | None = None) -> tuple[Choice, ...]:
    return tuple(Choice(label=f"cause_{cause}", value=cause_value(cause)) for cause in CAUSES)


def _language_choices() -> tuple[Choice, ...]:
    return tuple(Choice(label=f"language_{code}", value=language_value(code)) for code in LANGUAGES)


def _ask_cause(state: State, *before: Reply) -> Transition:
    choices = _cause_choices()
    return _t(
        replace(state, name="screening", offered=tuple(c.value for c in choices)),
        *before,
        Reply(template=_ask("screening"), choices=choices),
    )


def _conclude(state: State, facts: Facts) -> Transition:
    """The decision, explained; every claim becomes a case, a refusal one for a person to confirm."""
    units = tuple(_decide(state, facts))
    explained = Reply(template="decision", params={"groups": _groups(units), "units": len(units)})
    refused = all(u.decision.outcome is Outcome.not_covered for u in units)
    effect = OpenCase(
        units=units,
        fault=state.fault,
        claim_date=state.claim_date or facts.today,
        prefers_discount=bool(state.prefers_discount),
        attachment_ids=state.attachment_ids,
    )
    closing = (
        Reply(template="refusal_case_opened", params=_next_step_params(units, facts))
        if refused
        else Reply(template="case_opened", params={"units": len(units)})
    )
    return Transition(
        state=replace(state, name="with_engineer", offered=(), failures=0),
        replies=(explained, closing),
        effects=(effect,),
    )


def _next_step_params(units: tuple[UnitDecision, ...], facts: Facts) -> dict[str, Any]:
    outcomes = {u.decision.outcome for u in units}
    clauses = sorted({c for u in units for c in u.decision.clauses})
    return {
        "case_ref": facts.case_ref,
        "refused": outcomes == {Outcome.not_covered},
        "review": Outcome.review in outcomes,
        "clauses": clauses,
        # Documents can still change a decision counted from the serial (W3) or refused for want of them (X2).
        "documents_help": any("W3" in u.decision.clauses or "X2" in u.decision.clauses for u in units),
        "cargo": any("M1" in u.decision.clauses for u in units),
    }


# --- helpers -------------------------------------------------------------------------------------------


def _t(state: State, *replies: Reply, effects: tuple[Effect, ...] = ()) -> Transition:
    return Transition(state=state, replies=replies, effects=effects)


def _with(transition: Transition, *, effects: tuple[Effect, ...]) -> Transition:
    return Transition(
        state=transition.state, replies=transition.replies, effects=(*transition.effects, *effects)
    )


def _absorb(state: State, reading: Reading, facts: Facts) -> State:
    """What a message says besides its request (a serial, the fault), kept for the case."""
    if state.name == "with_engineer":
        return state
    if reading.serials and len(state.serials) + len(reading.serials) <= facts.max_units:
        state = replace(state, serials=tuple(dict.fromkeys(state.serials + reading.serials)))
    if reading.fault and not state.fault and reading.fault_strength >= 2 and reading.intent != "human":
        state = replace(state, fault=reading.fault)
    if state.name in ("new", "closed"):
        state = replace(state, claim_date=facts.today)
    return state


def _ask_serial() -> Reply:
    return Reply(template=_ask("awaiting_serial"))


def _ask(state: StateName) -> str:
    """The template that asks the question `state` waits on."""
    return STATES[state].ask or ""


def _ask_again(state: State, facts: Facts) -> Transition:
    """The question the customer still owes us an answer to, asked again."""
    if state.name == "with_engineer":
        return _t(state)
    if state.name in ("new", "closed"):
        return _t(state, _ask_serial())
    return _next(state, facts)


def _reask(state: State, reading: Reading, facts: Facts) -> Transition:
    """A polite re-ask of the open question; from the third failed try on, a person is offered as well."""
    if state.confirm is not None:
        return _ask_confirmation(state, facts)
    spec = STATES[state.name] if STATES[state.name].reask else STATES["awaiting_serial"]
    template = spec.reask or "serial_reask"
    choices = spec.choices(state)
    params: dict[str, Any] = {}
    if state.name == "awaiting_serial":
        params["attempt"] = _attempt_excerpt(reading.text) if reading.serial_attempt else None
    failures = state.failures + 1
    if failures >= MAX_FAILURES:
        choices = (*choices, Choice(label="talk_to_person", value=HUMAN))
    state = replace(state, failures=failures, offered=tuple(c.value for c in choices) or state.offered)
    return _t(
        state,
        Reply(template=template, params={**params, "offer_human": failures >= MAX_FAILURES}, choices=choices),
    )


def _resolve_choice(state: State, text: str, facts: Facts) -> str:
    """On channels without buttons the customer answers with the option's number, or types its label."""
    if _OPTION_NUMBER.fullmatch(text) and state.offered and 1 <= int(text) <= len(state.offered):
        return state.offered[int(text) - 1]
    if state.offered and facts.labels:
        value = facts.labels.get(fold(text).strip(" .!¡¿?"))
        if value is not None and value in state.offered:
            return value
    if state.offered and len(text) <= 4:
        # A full-width or Arabic-Indic digit ("１", "٢") picks an option too.
        number = understand(text, facts.lexicon, facts.policy).option
        if number is not None and 1 <= number <= len(state.offered):
            return state.offered[number - 1]
    return text


def _attempt_excerpt(text: str) -> str | None:
    if not looks_like_serial_attempt(text):
        return None
    token = max(text.split(), key=len)
    return normalize_serial(token)[:40]


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
    # The registry's record proves the sale; otherwise what the customer showed us, or nothing.
    claims = [
        unit_claim(
            serial,
            claim_date=claim_date,
            record=facts.registry.get(serial),
            proof=Proof(state.proof or Proof.none.value),
            circumstances=circumstances,
            prefers_discount=bool(state.prefers_discount),
        )
        for serial in state.serials
    ]
    # Two passes (docs/policy.md): M5 counts the covered units; the discount is on one unit per order.
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


# --- the states ----------------------------------------------------------------------------------------


def _no_choices(state: State) -> tuple[Choice, ...]:
    return ()


@dataclass(frozen=True, kw_only=True)
class StateSpec:
    """A state's handler, and the question it waits on: how it is asked, asked again, and the options."""

    handle: Callable[[State, Reading, Event, Facts], Transition]
    ask: str | None = None
    reask: str | None = None
    choices: Callable[[State], tuple[Choice, ...]] = _no_choices


STATES: Mapping[StateName, StateSpec] = {
    "new": StateSpec(handle=_new),
    "awaiting_serial": StateSpec(handle=_intake, ask="ask_serial", reask="serial_reask"),
    "awaiting_fault": StateSpec(handle=_intake, ask="ask_fault", reask="fault_reask"),
    "awaiting_proof": StateSpec(handle=_intake, ask="ask_proof", reask="proof_reask", choices=_proof_choices),
    "screening": StateSpec(handle=_intake, ask="ask_cause", reask="cause_reask", choices=_cause_choices),
    "preference": StateSpec(
        handle=_intake, ask="ask_preference", reask="preference_reask", choices=_preference_choices
    ),
    "with_engineer": StateSpec(handle=_with_engineer),
    "closed": StateSpec(handle=_closed),
}
