"""Canned replies for the desk: a small TOML file of the usual answers, each in every language.

`templates/desk_replies.toml` is the default (DESK_REPLIES_FILE names another). The text offered for a case is
the one of the case's language, by the same fallback as every other text (pt_PT -> pt -> en); `{case_ref}`,
`{customer}` and the file's `[values]` are filled in. Placeholders are replaced by name only: the file is
configuration, and the case's values are data, never format strings.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bot.render import TEMPLATES
from policy import language_chain

DEFAULT_FILE = TEMPLATES / "desk_replies.toml"
_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


class CannedRepliesError(ValueError):
    """The file is not a valid canned replies file; the message names what is wrong."""


@dataclass(frozen=True)
class CannedReply:
    id: str
    title: str
    texts: Mapping[str, str]  # language -> text, with {placeholders}


@dataclass(frozen=True)
class CannedReplies:
    replies: tuple[CannedReply, ...]
    values: Mapping[str, str]

    def for_case(self, language: str, **case_values: str) -> list[dict[str, str]]:
        """Every reply in the case's language (or the nearest one there is), placeholders filled."""
        values = {**self.values, **case_values}
        out = []
        for reply in self.replies:
            chosen = next((code for code in language_chain(language) if code in reply.texts), None)
            if chosen is None:
                continue
            text = _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), reply.texts[chosen])
            out.append({"id": reply.id, "title": reply.title, "language": chosen, "text": text})
        return out


def load(path: Path | None = None) -> CannedReplies:
    path = path or DEFAULT_FILE
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise CannedRepliesError(f"cannot read the canned replies file {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise CannedRepliesError(f"the canned replies file {path} is not valid TOML: {error}") from None
    values = data.get("values", {})
    if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
        raise CannedRepliesError(f"{path}: [values] must map names to text")
    replies = []
    seen: set[str] = set()
    for index, entry in enumerate(data.get("reply", []), start=1):
        where = f"{path}: reply {index}"
        if not isinstance(entry, dict):
            raise CannedRepliesError(f"{where} must be a table")
        reply_id, title, texts = entry.get("id"), entry.get("title"), entry.get("text")
        if not isinstance(reply_id, str) or not reply_id or reply_id in seen:
            raise CannedRepliesError(f"{where} needs an id of its own")
        if not isinstance(title, str) or not title.strip():
            raise CannedRepliesError(f"{where} ({reply_id}) needs a title")
        if (
            not isinstance(texts, dict)
            or not texts
            or not all(isinstance(t, str) and t.strip() for t in texts.values())
        ):
            raise CannedRepliesError(f"{where} ({reply_id}) needs [reply.text] with a text per language")
        seen.add(reply_id)
        replies.append(
            CannedReply(id=reply_id, title=title.strip(), texts={k: v.strip() for k, v in texts.items()})
        )
    return CannedReplies(replies=tuple(replies), values={k: v.strip() for k, v in values.items()})
