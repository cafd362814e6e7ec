"""Attachment storage: customers' files in a folder, content-addressed, limited in size and type."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from bot.messages import Attachment

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
# The first bytes of the types we accept: the declared MIME type alone is the sender's word, not proof.
_MAGIC = {
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/webp": (b"RIFF",),
    "application/pdf": (b"%PDF-",),
    "audio/amr": (b"#!AMR",),
    "audio/ogg": (b"OggS",),
}


class AttachmentRejected(Exception):
    """A file we will not keep; `reason` is `too_large` or `type`."""

    def __init__(self, reason: str, name: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.reason = reason
        self.name = name


@dataclass(frozen=True)
class AttachmentStore:
    root: Path
    max_bytes: int
    allowed_types: frozenset[str]

    def save(self, data: bytes, *, name: str, mime: str, kind: str) -> Attachment:
        """Keep `data`; the returned attachment's `ref` is its path relative to the store."""
        mime = mime.split(";")[0].strip().lower()
        if len(data) > self.max_bytes:
            raise AttachmentRejected("too_large", name)
        if mime not in self.allowed_types or not _matches(mime, data):
            raise AttachmentRejected("type", name)
        digest = hashlib.sha256(data).hexdigest()
        safe = _SAFE_NAME.sub("_", Path(name).name)[-80:] or "file"
        relative = f"{digest[:2]}/{digest}-{safe}"
        target = self.root / relative
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(target.suffix + ".part")
            partial.write_bytes(data)
            partial.replace(target)
        return Attachment(kind=kind, name=name[:255], mime=mime, size=len(data), ref=relative)

    def path(self, ref: str) -> Path:
        resolved = (self.root / ref).resolve()
        if self.root.resolve() not in resolved.parents:
            raise FileNotFoundError(ref)
        return resolved

    @staticmethod
    def rejected(name: str, reason: str) -> Attachment:
        """A placeholder telling the core that a file was refused, so the customer hears why."""
        return Attachment(kind="rejected", name=name[:255], mime="", size=0, ref=reason)


def _matches(mime: str, data: bytes) -> bool:
    prefixes = _MAGIC.get(mime)
    return prefixes is None or data.startswith(prefixes)
