"""Block Kit for the Slack desk: the case message, thread lines, modals, the App Home and `/warranty` answers.

Pure functions of the desk's case dicts (bot.desk.get_case); every text is clipped to Block Kit's limits and
customer text is escaped, so that it can neither break the layout nor mention anyone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bot.status import CaseStatus
from policy import Method

Block = dict[str, Any]

# Block Kit limits (https://docs.slack.dev/reference/block-kit/blocks): blocks per message and per view,
# characters of a section's text, of a header, of a button label, of a field, of an option's value.
MAX_MESSAGE_BLOCKS = 50
MAX_VIEW_BLOCKS = 100
MAX_TEXT = 3000
MAX_HEADER = 150
MAX_FIELD = 2000
MAX_CONTEXT = 2000
MAX_FALLBACK = 3000
MAX_OPTION_VALUE = 150
UNIT_LINES = 12  # up to this many units are listed one per line; more are grouped

CLAIM, CHOOSE_METHOD, ASK_CUSTOMER, NOT_COVERED, CLOSE = (
    "claim_case",
    "choose_method",
    "ask_customer",
    "not_covered",
    "close_case",
)
ASK_VIEW, REFUSE_VIEW = "ask_customer", "not_covered"
QUESTION_BLOCK, QUESTION_INPUT = "question_block", "question_input"
REASON_BLOCK, REASON_INPUT = "reason_block", "reason_input"
CLAUSES_BLOCK, CLAUSES_INPUT = "clauses_block", "clauses_input"
# The steps after the chosen method (bot/fulfilment.py): a menu of the next steps, a modal for their input.
FULFIL, FULFIL_VIEW, FULFIL_BLOCK, FULFIL_INPUT = "fulfil_step", "fulfil_step", "fulfil_block", "fulfil_input"
# Engineers' corrections of a unit's facts, and methods outside the decision (goodwill or chargeable).
CORRECT_UNIT, CORRECT_VIEW, GOODWILL_VIEW = "correct_unit", "correct_unit", "goodwill_method"
SERIAL_BLOCK, SERIAL_INPUT = "serial_block", "serial_input"
ARRIVAL_BLOCK, ARRIVAL_INPUT = "arrival_block", "arrival_input"
PRODUCTION_BLOCK, PRODUCTION_INPUT = "production_block", "production_input"
PROOF_BLOCK, PROOF_INPUT = "proof_block", "proof_input"
NOTE_BLOCK, NOTE_INPUT = "note_block", "note_input"
GOODWILL_BLOCK, GOODWILL_INPUT = "goodwill_block", "goodwill_input"
PROOF_CHOICES = {
    "documents": "Documents valid (invoice and certificate)",
    "altered": "Certificate altered or not matching (X3)",
    "none": "No valid proof",
}
GOODWILL_CHOICES = {
    "goodwill": "Goodwill: free, not a warranty service",
    "chargeable": "Chargeable: at the customer's cost",
}
MAX_OPTIONS = 100

METHOD_LABELS = {
    "remote_guidance": "Remote guidance",
    "factory_repair": "Factory repair",
    "door_to_door": "Door to door",
    "discount_compensation": "Discount compensation",
    "not_covered": "Not covered",
}
SELECTABLE_METHODS = tuple(m.value for m in Method)  # the policy's; refusing is its own button
STATUS_LABELS: Mapping[str, str] = {
    CaseStatus.open: "Open, unclaimed",
    CaseStatus.to_confirm: "Refusal to confirm",
    CaseStatus.claimed: "Claimed",
    CaseStatus.waiting_customer: "Waiting for the customer",
    CaseStatus.in_service: "In service",
    CaseStatus.resolved: "Resolved",
    CaseStatus.closed: "Closed",
}
OUTCOME_LABELS = {"covered": "✅ covered", "not_covered": "❌ not covered", "review": "🔎 review"}


# --- text ---------------------------------------------------------------------------------------------------


def escape(text: str | None) -> str:
    """Text as Slack mrkdwn data: `&`, `<` and `>` escaped, so `<!channel>` or a link can't be smuggled in."""
    return (text or "").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def clip(text: str, limit: int) -> str:
    """At most `limit` characters, with an ellipsis when cut; plain text (a mrkdwn text uses clip_mrkdwn)."""
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


_OPEN_MARKUP = re.compile(r"&[#A-Za-z0-9]*$|<[^<>]*$")  # an entity or a link left open at the end


def _safe_cut(text: str, at: int) -> int:
    """The latest cut at or before `at` that leaves neither an entity (`&amp;`) nor a link (`<url|name>`)
    half in the first part."""
    opened = _OPEN_MARKUP.search(text[:at])
    return opened.start() if opened and opened.start() > 0 else at


def clip_mrkdwn(text: str, limit: int) -> str:
    """Escaped mrkdwn in at most `limit` characters, cut before an entity or a link rather than inside it."""
    if len(text) <= limit:
        return text
    return text[: _safe_cut(text, max(0, limit - 1))] + "…"


def plain(text: str, limit: int = MAX_TEXT) -> dict[str, Any]:
    return {"type": "plain_text", "text": clip(text, limit) or " ", "emoji": True}


def mrkdwn(text: str, limit: int = MAX_TEXT) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": clip_mrkdwn(text, limit) or " ", "verbatim": True}


def section(text: str) -> Block:
    return {"type": "section", "text": mrkdwn(text)}


def context(text: str) -> Block:
    return {"type": "context", "elements": [mrkdwn(text, MAX_CONTEXT)]}


def sections(text: str, *, max_blocks: int = 5) -> list[Block]:
    """Long mrkdwn as consecutive sections of at most MAX_TEXT characters, each cut outside entities and
    links (the last one clipped)."""
    chunks: list[str] = []
    rest = text
    while len(rest) > MAX_TEXT and len(chunks) < max_blocks:
        cut = _safe_cut(rest, MAX_TEXT)
        chunks.append(rest[:cut])
        rest = rest[cut:]
    if len(chunks) < max_blocks:
        chunks.append(rest)
    elif rest:
        chunks[-1] = clip_mrkdwn(chunks[-1] + rest, MAX_TEXT)
    return [section(chunk) for chunk in chunks if chunk] or [section("")]


_SLACK_MARKUP = re.compile(r"<([^<>|]*)(?:\|([^<>]*))?>")


def slack_to_plain(text: str, names: Mapping[str, str] | None = None) -> str:
    """An engineer's Slack message as plain text for the customer: links, mentions and escapes resolved; a
    mention of a colleague becomes their name (`names`: user id -> display name), never an empty gap."""

    def resolve(match: re.Match[str]) -> str:
        target, label = match.group(1), match.group(2)
        if target.startswith("@"):  # a user: the label Slack gave, else the name we looked up
            return label or (names or {}).get(target[1:]) or "a colleague"
        if target.startswith("#"):  # a channel
            return f"#{label}" if label else "#channel"
        if target.startswith("!"):  # @here, @channel, user groups, dates: nothing the customer needs
            return label or ""
        if target.startswith("mailto:"):
            return label or target.removeprefix("mailto:")
        if label and label != target:
            return f"{label} ({target})"
        return target

    text = _SLACK_MARKUP.sub(resolve, text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&").strip()


def mentioned_users(text: str) -> list[str]:
    """The user ids mentioned without a label (`<@U05LIWEI7KD>`), whose names must be looked up."""
    return list(dict.fromkeys(re.findall(r"<@([UW][A-Z0-9]{2,20})>", text)))


# --- the case message -----------------------------------------------------------------------------------------


def attachment_url(public_url: str, ref: str, attachment_id: int) -> str:
    return f"{public_url.rstrip('/')}/api/desk/cases/{ref}/attachments/{attachment_id}"


def attachment_links(
    case: Mapping[str, Any], public_url: str, ids: Iterable[int] | None = None, *, limit: int = MAX_TEXT - 100
) -> str:
    """Links to the case's attachments (all, or those with `ids`), names only without a public URL; as many
    as fit in `limit` characters, whole, then "+N more"."""
    wanted = set(ids) if ids is not None else None
    links = []
    for item in case.get("attachments", ()):
        if wanted is not None and item["id"] not in wanted:
            continue
        name = escape(clip(item["name"], 80)).replace("|", "¦")
        if public_url:
            links.append(f"<{attachment_url(public_url, case['ref'], item['id'])}|{name}>")
        else:
            links.append(name)
    kept: list[str] = []
    size = 0
    for index, link in enumerate(links):
        more = f", +{len(links) - index - 1} more" if index < len(links) - 1 else ""
        if size + len(link) + 2 + len(more) > limit:
            return ", ".join(kept) + f"{', ' if kept else ''}+{len(links) - index} more"
        kept.append(link)
        size += len(link) + 2
    return ", ".join(kept)


def status_line(case: Mapping[str, Any]) -> str:
    parts = [f"*Status:* {STATUS_LABELS.get(case['status'], case['status'])}"]
    if case.get("claimed_by"):
        parts.append(f"*Claimed by:* {escape(case['claimed_by'])}")
    if case.get("method"):
        parts.append(f"*Method:* {METHOD_LABELS.get(case['method'], case['method'])}")
    if case.get("rating"):
        rating = int(case["rating"])
        parts.append(f"*Rating:* {'★' * rating}{'☆' * (5 - rating)} {rating}/5")
    return " · ".join(parts)


def _unit_details(unit: Mapping[str, Any]) -> str:
    details = []
    if unit.get("model"):
        details.append(escape(unit["model"]))
    registry = unit.get("registry") or {}
    if registry.get("order_id"):
        cargo = " (cargo compensation, M1)" if registry.get("cargo_compensation") else ""
        details.append(f"order {escape(str(registry['order_id']))}{cargo}")
    details.append(f"made {unit.get('production_date') or '—'}")
    details.append(f"port {unit.get('port_arrival_date') or '—'}")
    details.append(f"warranty until {unit.get('warranty_end') or '—'}")
    decision = OUTCOME_LABELS.get(unit.get("outcome", ""), unit.get("outcome", ""))
    if unit.get("basis"):
        decision += f" ({unit['basis']})"
    details.append(decision)
    if unit.get("clauses"):
        details.append(", ".join(unit["clauses"]))
    return " · ".join(details)


def units_text(units: Sequence[Mapping[str, Any]], limit: int = MAX_TEXT) -> str:
    """One line per unit for a few units; for many, one line per group of units with the same facts."""
    counts: dict[str, int] = {}
    for unit in units:
        counts[unit.get("outcome", "")] = counts.get(unit.get("outcome", ""), 0) + 1
    head = f"*Units ({len(units)}):* " + ", ".join(
        f"{n} {OUTCOME_LABELS.get(o, o)}" for o, n in counts.items()
    )
    if len(units) <= UNIT_LINES:
        lines = [f"• `{escape(u['serial'])}` {_unit_details(u)}" for u in units]
    else:
        groups: dict[str, list[str]] = {}
        for unit in units:
            groups.setdefault(_unit_details(unit), []).append(unit["serial"])
        lines = [f"• {len(serials)} × {_serials(serials)}: {details}" for details, serials in groups.items()]
    return _fit([head, *lines], limit, "… and {n} more (`/warranty` shows them all)")


def _serials(serials: Sequence[str]) -> str:
    shown = ", ".join(f"`{escape(s)}`" for s in serials[:3])
    if len(serials) > 4:
        return f"{shown} … `{escape(serials[-1])}`"
    if len(serials) == 4:
        return f"{shown}, `{escape(serials[-1])}`"
    return shown


def _fit(lines: Sequence[str], limit: int, more: str = "… and {n} more") -> str:
    """Join lines while they fit in `limit`, keeping room to say how many were left out."""
    kept: list[str] = []
    size = 0
    for index, line in enumerate(lines):
        after = len(lines) - index - 1
        reserve = len(more.format(n=after)) + 1 if after else 0
        if size + len(line) + 1 + reserve > limit:
            kept.append(more.format(n=len(lines) - index))
            break
        kept.append(line)
        size += len(line) + 1
    return clip_mrkdwn("\n".join(kept), limit)


def all_units_sections(units: Sequence[Mapping[str, Any]], max_blocks: int = 10) -> list[Block]:
    """Every unit on its own line, packed into sections (at most `max_blocks`; the last says what is left)."""
    chunks: list[list[str]] = [[]]
    size = 0
    for line in (clip_mrkdwn(f"• `{escape(u['serial'])}` {_unit_details(u)}", MAX_TEXT) for u in units):
        if chunks[-1] and size + len(line) + 1 > MAX_TEXT:
            chunks.append([])
            size = 0
        chunks[-1].append(line)
        size += len(line) + 1
    if len(chunks) > max_blocks:
        rest = [line for chunk in chunks[max_blocks - 1 :] for line in chunk]
        return [section("\n".join(c)) for c in chunks[: max_blocks - 1]] + [section(_fit(rest, MAX_TEXT))]
    return [section("\n".join(c)) for c in chunks if c]


def case_blocks(
    case: Mapping[str, Any], *, public_url: str, actions: bool = True, all_units: bool = False
) -> tuple[str, list[Block]]:
    """The case message: fallback text (notifications) and blocks.

    `actions` adds the engineers' buttons; `all_units` lists every unit instead of a summary (for /warranty).
    """
    ref = case["ref"]
    units = case.get("units") or []
    customer = escape(case.get("customer") or "unknown customer")
    header = f"{ref} · {STATUS_LABELS.get(case['status'], case['status'])}"
    clauses = sorted({c for u in units for c in u.get("clauses", ())})
    outcomes = sorted({u.get("outcome", "") for u in units})
    decision = ", ".join(OUTCOME_LABELS.get(o, o) for o in outcomes) or "no units given"
    blocks: list[Block] = [
        {"type": "header", "text": plain(header, MAX_HEADER)},
        section(
            f"*Customer:* {customer}"
            + (f" · *Company (registry):* {escape(case['company'])}" if case.get("company") else "")
            + f" · *Channel:* {escape(case['channel'])} · "
            f"*Language:* {escape(case['language'])} · *Claim date:* {case.get('claim_date', '—')}"
        ),
        section(status_line(case)),
        section(
            f"*Decision:* {decision}"
            + (f" · *Clauses:* {', '.join(clauses)}" if clauses else "")
            + (" · customer prefers the discount" if case.get("prefers_discount") else "")
        ),
    ]
    if units and all_units:
        blocks.append(section(f"*Units ({len(units)}):*"))
        blocks.extend(all_units_sections(units))
    elif units:
        blocks.append(section(units_text(units)))
    blocks.extend(sections(f"*Fault:* {escape(case.get('fault') or '—')}", max_blocks=2))
    if case.get("refusal_reason"):
        blocks.extend(sections(f"*Not covered because:* {escape(case['refusal_reason'])}", max_blocks=1))
    links = attachment_links(case, public_url)
    if links:
        blocks.append(section(f"*Attachments:* {links}"))
    if case.get("fulfilment"):
        blocks.append(section(fulfilment_line(case["fulfilment"])))
    waiting = case.get("credits_available") or []
    if waiting:
        listed = ", ".join(
            f"{escape(str(c['amount']))} {escape(str(c.get('currency') or ''))} (order "
            f"{escape(str(c['order_id']))}, {escape(str(c['case_ref']))})"
            for c in waiting[:10]
        )
        blocks.append(section(f"💳 *Discount credit waiting for this customer's next order:* {listed}"))
    if actions and case["status"] != "closed":
        blocks.append(action_block(case))
        if (case.get("fulfilment") or {}).get("actions"):
            blocks.append(fulfil_block(case))
    elif case["status"] == "closed":
        blocks.append(context("Closed. Use `/warranty " + ref + "` to see the case."))
    fallback = (
        f"Case {ref} · {customer} ({escape(case['channel'])}) · {len(units)} unit(s) · "
        f"{STATUS_LABELS.get(case['status'], case['status'])}: {escape(case.get('fault') or '')}"
    )
    return clip_mrkdwn(fallback, MAX_FALLBACK), blocks[:MAX_MESSAGE_BLOCKS]


def method_option(ref: str, method: str) -> dict[str, Any]:
    return {"text": plain(METHOD_LABELS[method], 75), "value": f"{ref}|{method}"[:MAX_OPTION_VALUE]}


def action_block(case: Mapping[str, Any]) -> Block:
    ref = case["ref"]
    select: dict[str, Any] = {
        "type": "static_select",
        "action_id": CHOOSE_METHOD,
        "placeholder": plain("Choose method", 150),
        "options": [method_option(ref, m) for m in SELECTABLE_METHODS],
    }
    if case.get("method") in SELECTABLE_METHODS:
        select["initial_option"] = method_option(ref, case["method"])
    return {
        "type": "actions",
        "block_id": "case_actions",
        "elements": [
            {
                "type": "button",
                "action_id": CLAIM,
                "text": plain("Claim", 75),
                "value": ref,
                "style": "primary",
            },
            select,
            {"type": "button", "action_id": ASK_CUSTOMER, "text": plain("Ask customer", 75), "value": ref},
            {
                "type": "button",
                "action_id": NOT_COVERED,
                "text": plain("Not covered", 75),
                "value": ref,
                "style": "danger",
            },
            {"type": "button", "action_id": CORRECT_UNIT, "text": plain("Correct a unit", 75), "value": ref},
            {
                "type": "button",
                "action_id": CLOSE,
                "text": plain("Close", 75),
                "value": ref,
                "confirm": {
                    "title": plain("Close the case?", 100),
                    "text": plain(f"{ref} will be closed and the customer asked for a rating.", 300),
                    "confirm": plain("Close", 30),
                    "deny": plain("Cancel", 30),
                },
            },
        ],
    }


def fulfilment_line(record: Mapping[str, Any]) -> str:
    data = record.get("data") or {}
    parts = [f"*Service step:* {escape(str(record.get('step_label') or record.get('step')))}"]
    if record.get("rma"):
        parts.append(f"*RMA:* {escape(str(record['rma']))}")
    for key, label in (("inbound", "Customer's shipment"), ("return", "Return"), ("parts_tracking", "Parts")):
        shipment = data.get(key)
        if isinstance(shipment, Mapping):
            parts.append(
                f"*{label}:* {escape(str(shipment.get('carrier') or ''))} {escape(str(shipment.get('tracking')))}"
            )
    if data.get("booked"):
        parts.append(f"*Visit:* {escape(str(data['booked']).replace('T', ' '))}")
    return " · ".join(parts)


def fulfil_block(case: Mapping[str, Any]) -> Block:
    ref = case["ref"]
    options = [
        {"text": plain(str(a["label"]), 75), "value": f"{ref}|{a['action']}"[:MAX_OPTION_VALUE]}
        for a in case["fulfilment"]["actions"]
    ]
    return {
        "type": "actions",
        "block_id": "fulfil_actions",
        "elements": [
            {
                "type": "static_select",
                "action_id": FULFIL,
                "placeholder": plain("Next service step", 150),
                "options": options,
            }
        ],
    }


def fulfil_modal(ref: str, action: str, label: str, needs: str) -> dict[str, Any]:
    return {
        "type": "modal",
        "callback_id": FULFIL_VIEW,
        "private_metadata": f"{ref}|{action}"[:3000],
        "title": plain(label, 24),
        "submit": plain("Save", 24),
        "close": plain("Cancel", 24),
        "blocks": [
            context(f"*{escape(label)}* on *{ref}*: the customer is told in their language."),
            {
                "type": "input",
                "block_id": FULFIL_BLOCK,
                "label": plain(needs[:1].upper() + needs[1:], 2000),
                "element": {
                    "type": "plain_text_input",
                    "action_id": FULFIL_INPUT,
                    "multiline": True,
                    "max_length": 2000,
                },
            },
        ],
    }


# --- thread lines -----------------------------------------------------------------------------------------------


def customer_message_blocks(
    case: Mapping[str, Any], *, sender: str | None, text: str, attachment_ids: Sequence[int], public_url: str
) -> tuple[str, list[Block]]:
    """A customer's message relayed into the case thread, attributed to the customer and their channel."""
    who = f"*{escape(sender or case.get('customer') or 'Customer')}* ({escape(case['channel'])})"
    body = escape(text) if text else "_(no text)_"
    blocks = sections(f"{who}: {body}", max_blocks=8)
    links = (
        attachment_links(case, public_url, attachment_ids, limit=MAX_CONTEXT - 10) if attachment_ids else ""
    )
    if links:
        blocks.append(context(f"📎 {links}"))
    elif attachment_ids:
        blocks.append(context(f"📎 {len(attachment_ids)} attachment(s)"))
    return clip_mrkdwn(f"{who}: {body}", MAX_FALLBACK), blocks


_UPDATE_LINES = {
    "claimed": "✋ Claimed by *{actor}*",
    "method_chosen": "🛠️ *{actor}* chose *{method}*; the customer has the instructions",
    "refused": "❌ *{actor}* decided: not covered ({clauses}): {reason}",
    "asked_customer": "❓ *{actor}* asked the customer: {question}",
    "closed": "✔️ Closed by *{actor}*; the customer was asked for a rating",
    "unit_corrected": "🔁 *{actor}* corrected {serial}; decided again: {outcome}",
    "replied": "💬 *{actor}* ({origin}) to the customer: {text}",
    "noted": "🔒 Internal note by *{actor}* ({origin}): {text}",
    "fulfilment": "📦 *{actor}*: {task} → {step}",
    "fulfilment_overdue": "⏰ {step} is waiting past its time: the next step is yours",
}


def _step_of(detail: Mapping[str, Any]) -> str:
    step = detail.get("step")
    return str(step[-1]) if isinstance(step, list) and step else str(step or "")


def update_line(
    action: str | None, actor: str | None, origin: str | None, detail: Mapping[str, Any]
) -> str | None:
    """A thread line for a case change, or None when the thread already shows it (or it needs no line).

    Replies and notes typed in the Slack thread are already there; those made on the local desk are not.
    """
    if not action or action not in _UPDATE_LINES:
        return None
    if action in ("replied", "noted") and origin == "slack":
        return None
    values = {
        "actor": escape(actor or "someone"),
        "origin": "local desk" if origin == "desk" else escape(origin or "desk"),
        "method": METHOD_LABELS.get(str(detail.get("method")), escape(str(detail.get("method")))),
        "reason": escape(str(detail.get("reason") or "")),
        "clauses": ", ".join(escape(str(c)) for c in detail.get("clauses") or ()) or "no clause",
        "question": escape(str(detail.get("question") or "")),
        "text": escape(str(detail.get("text") or "")),
        "serial": escape(str(detail.get("serial") or "")),
        "outcome": " → ".join(
            OUTCOME_LABELS.get(str(o), escape(str(o))) for o in detail.get("outcome") or ()
        ),
        "task": escape(str(detail.get("task") or "")).replace("_", " "),
        "step": escape(_step_of(detail)).replace("_", " "),
    }
    if action == "fulfilment" and detail.get("tracking"):
        values["step"] += f" ({escape(str(detail.get('carrier') or ''))} {escape(str(detail['tracking']))})"
    if action == "method_chosen" and detail.get("goodwill"):
        line = f"🛠️ *{values['actor']}* chose *{values['method']}* as {escape(str(detail['goodwill']))}: {values['reason']}"
        return clip_mrkdwn(line, MAX_TEXT)
    return clip_mrkdwn(_UPDATE_LINES[action].format(**values), MAX_TEXT)


# --- modals -------------------------------------------------------------------------------------------------------


def ask_modal(ref: str) -> dict[str, Any]:
    return {
        "type": "modal",
        "callback_id": ASK_VIEW,
        "private_metadata": ref,
        "title": plain("Ask customer", 24),
        "submit": plain("Send", 24),
        "close": plain("Cancel", 24),
        "blocks": [
            context(f"The question goes to the customer of *{ref}* in their chat, signed with your name."),
            {
                "type": "input",
                "block_id": QUESTION_BLOCK,
                "label": plain("Question for the customer", 2000),
                "element": {
                    "type": "plain_text_input",
                    "action_id": QUESTION_INPUT,
                    "multiline": True,
                    "max_length": 3000,
                },
            },
        ],
    }


def _reason_input() -> dict[str, Any]:
    """The reason an engineer gives the customer (a refusal, goodwill or chargeable work)."""
    return {
        "type": "input",
        "block_id": REASON_BLOCK,
        "label": plain("Reason (the customer reads it)", 2000),
        "element": {
            "type": "plain_text_input",
            "action_id": REASON_INPUT,
            "multiline": True,
            "max_length": 2000,
        },
    }


def refuse_modal(ref: str, clauses: Sequence[str]) -> dict[str, Any]:
    element: dict[str, Any] = {
        "type": "plain_text_input",
        "action_id": CLAUSES_INPUT,
        "placeholder": plain("e.g. X1, X4", 150),
    }
    if clauses:
        element["initial_value"] = ", ".join(clauses)
    return {
        "type": "modal",
        "callback_id": REFUSE_VIEW,
        "private_metadata": ref,
        "title": plain("Not covered", 24),
        "submit": plain("Send", 24),
        "close": plain("Cancel", 24),
        "blocks": [
            context(
                f"The customer of *{ref}* is told that the claim is not covered, with your reason and the "
                "clauses, and is asked for a rating."
            ),
            _reason_input(),
            {
                "type": "input",
                "block_id": CLAUSES_BLOCK,
                "label": plain("Clauses (comma-separated)", 2000),
                "optional": True,
                "element": element,
            },
        ],
    }


def _options(choices: Mapping[str, str]) -> list[dict[str, Any]]:
    return [{"text": plain(label, 75), "value": value} for value, label in choices.items()]


def correct_modal(ref: str, units: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Correct a unit's facts; the policy decides every unit of the case again (bot.desk.correct_unit)."""
    serials = [str(u["serial"]) for u in units][:MAX_OPTIONS]
    serial: dict[str, Any] = {
        "type": "static_select",
        "action_id": SERIAL_INPUT,
        "options": [{"text": plain(s, 75), "value": s[:MAX_OPTION_VALUE]} for s in serials],
    }
    if len(serials) == 1:
        serial["initial_option"] = serial["options"][0]
    return {
        "type": "modal",
        "callback_id": CORRECT_VIEW,
        "private_metadata": ref,
        "title": plain("Correct a unit", 24),
        "submit": plain("Decide again", 24),
        "close": plain("Cancel", 24),
        "blocks": [
            context(
                f"Facts read from the customer's documents or found on inspection. Every unit of *{ref}* is "
                "decided again by the policy, and the correction is kept in the history."
            ),
            {"type": "input", "block_id": SERIAL_BLOCK, "label": plain("Unit", 2000), "element": serial},
            {
                "type": "input",
                "block_id": ARRIVAL_BLOCK,
                "optional": True,
                "label": plain("Port arrival date (from the customer's documents)", 2000),
                "element": {"type": "datepicker", "action_id": ARRIVAL_INPUT},
            },
            {
                "type": "input",
                "block_id": PRODUCTION_BLOCK,
                "optional": True,
                "label": plain("Production date", 2000),
                "element": {"type": "datepicker", "action_id": PRODUCTION_INPUT},
            },
            {
                "type": "input",
                "block_id": PROOF_BLOCK,
                "optional": True,
                "label": plain("Proof of purchase", 2000),
                "element": {
                    "type": "static_select",
                    "action_id": PROOF_INPUT,
                    "options": _options(PROOF_CHOICES),
                },
            },
            {
                "type": "input",
                "block_id": NOTE_BLOCK,
                "optional": True,
                "label": plain("Why (kept in the history)", 2000),
                "element": {
                    "type": "plain_text_input",
                    "action_id": NOTE_INPUT,
                    "multiline": True,
                    "max_length": 2000,
                },
            },
        ],
    }


def goodwill_modal(ref: str, method: str, allowed: Sequence[str]) -> dict[str, Any]:
    """A method the decision does not allow: the engineer says whether it is goodwill or chargeable, and why."""
    allowed_text = ", ".join(METHOD_LABELS.get(m, m) for m in allowed) or "none (no unit is covered)"
    return {
        "type": "modal",
        "callback_id": GOODWILL_VIEW,
        "private_metadata": f"{ref}|{method}"[:3000],
        "title": plain("Outside the decision", 24),
        "submit": plain("Send", 24),
        "close": plain("Cancel", 24),
        "blocks": [
            context(
                f"The decision on *{ref}* does not allow *{METHOD_LABELS.get(method, method)}* (it allows: "
                f"{allowed_text}). The customer is told it is goodwill or chargeable, never the warranty's."
            ),
            {
                "type": "input",
                "block_id": GOODWILL_BLOCK,
                "label": plain("It is", 2000),
                "element": {
                    "type": "radio_buttons",
                    "action_id": GOODWILL_INPUT,
                    "options": _options(GOODWILL_CHOICES),
                },
            },
            _reason_input(),
        ],
    }


def parse_clauses(text: str | None) -> list[str]:
    return sorted({c.strip().upper() for c in re.split(r"[,;\s]+", text or "") if c.strip()})


# --- the App Home and /warranty ----------------------------------------------------------------------------------


def _case_line(case: Mapping[str, Any]) -> str:
    parts = [f"*{case['ref']}*", escape(case["channel"]), STATUS_LABELS.get(case["status"], case["status"])]
    if case.get("claimed_by"):
        parts.append(f"claimed by {escape(case['claimed_by'])}")
    if case.get("method"):
        parts.append(METHOD_LABELS.get(case["method"], case["method"]))
    if isinstance(case.get("units"), int):
        parts.append(f"{case['units']} unit(s)")
    return " · ".join(parts)


def _case_list(cases: Sequence[Mapping[str, Any]], empty: str, limit: int = MAX_TEXT) -> str:
    if not cases:
        return empty
    return _fit([f"• {_case_line(c)}" for c in cases], limit)


def home_view(
    *, engineer: str, mine: Sequence[Mapping[str, Any]], by_status: Mapping[str, Sequence[Mapping[str, Any]]]
) -> dict[str, Any]:
    """The App Home: the engineer's own claimed cases, then the open cases grouped by status."""
    blocks: list[Block] = [
        {"type": "header", "text": plain("Warranty desk", MAX_HEADER)},
        section(f"*Your cases ({escape(engineer)}):*\n" + _case_list(mine, "_None claimed by you._")),
        {"type": "divider"},
    ]
    for status, cases in by_status.items():
        title = f"*{STATUS_LABELS.get(status, status)} ({len(cases)}):*\n"
        blocks.append(section(title + _case_list(cases, "_None._", MAX_TEXT - len(title))))
    blocks.append(context("Use `/warranty <case ref | serial>` for the details of a case or a unit."))
    return {"type": "home", "blocks": blocks[:MAX_VIEW_BLOCKS]}


def refused_home_view() -> dict[str, Any]:
    return {"type": "home", "blocks": [section("This desk is for the after-sales engineers.")]}


def unit_blocks(
    serial: str,
    record: Mapping[str, Any] | None,
    decision: Mapping[str, Any] | None,
    cases: Sequence[Mapping[str, Any]],
) -> tuple[str, list[Block]]:
    """A unit's registry record and warranty status today, and the cases that name it."""
    lines = [f"*Unit `{escape(serial)}`*"]
    if record:
        lines.append(
            f"*Registry:* order {escape(record['order_id'])} · made {record.get('production_date') or '—'} · "
            f"port arrival {record.get('port_arrival_date') or '—'}"
            + (" · cargo compensation taken" if record.get("cargo_compensation") else "")
        )
    else:
        lines.append("*Registry:* not in the shipment records; the serial's production date applies (W3).")
    if decision:
        status = OUTCOME_LABELS.get(str(decision["outcome"]), str(decision["outcome"]))
        lines.append(
            f"*Warranty today:* {status} · until {decision.get('warranty_end') or '—'}"
            + (f" ({decision['basis']})" if decision.get("basis") else "")
            + (f" · clauses {', '.join(decision['clauses'])}" if decision.get("clauses") else "")
        )
    blocks = [
        section("\n".join(lines)),
        section("*Cases:*\n" + _case_list(cases, "_No case names this unit._")),
    ]
    return clip_mrkdwn(" ".join(lines), MAX_FALLBACK), blocks
