"""Attachment storage: customers' files in a folder, content-addressed, limited in size and type."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bot.messages import Attachment

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def _mpeg_audio(data: bytes) -> bool:
    """An ID3 tag, or an MPEG audio frame header (layer I-III; not the reserved version, bitrate or rate)."""
    if data.startswith(b"ID3") and len(data) >= 10:
        return True
    if len(data) < 4 or data[0] != 0xFF or data[1] & 0xE0 != 0xE0:
        return False
    version, layer = (data[1] >> 3) & 0b11, (data[1] >> 1) & 0b11
    bitrate, rate = data[2] >> 4, (data[2] >> 2) & 0b11
    return version != 0b01 and layer != 0b00 and bitrate != 0b1111 and rate != 0b11


# What the first bytes of each type we can store must be: the declared MIME type alone is the sender's word,
# and a file that a browser would sniff as HTML must never be kept as a photo or a voice message. A type an
# operator adds to ATTACHMENT_TYPES without a check here is refused (docs/operations.md, Security).
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1", b"hevc", b"hevx"})
_MAGIC: dict[str, Callable[[bytes], bool]] = {
    "image/jpeg": lambda d: d.startswith(b"\xff\xd8\xff"),
    "image/png": lambda d: d.startswith(b"\x89PNG\r\n\x1a\n"),
    "image/gif": lambda d: d.startswith((b"GIF87a", b"GIF89a")),
    "image/webp": lambda d: d[:4] == b"RIFF" and d[8:12] == b"WEBP",
    "application/pdf": lambda d: d.startswith(b"%PDF-"),
    "audio/amr": lambda d: d.startswith((b"#!AMR\n", b"#!AMR-WB\n")),
    "audio/ogg": lambda d: d.startswith(b"OggS"),
    "audio/mpeg": _mpeg_audio,
    "audio/aac": lambda d: d.startswith(b"ADIF") or (len(d) >= 2 and d[0] == 0xFF and d[1] & 0xF6 == 0xF0),
    # HEIC/HEIF (iPhone photos) are ISO media files too: told from MPEG-4 by the brand after `ftyp`.
    "image/heic": lambda d: d[4:8] == b"ftyp" and d[8:12] in _HEIF_BRANDS,
    "audio/mp4": lambda d: d[4:8] == b"ftyp" and d[8:12] not in _HEIF_BRANDS,
    "video/mp4": lambda d: d[4:8] == b"ftyp" and d[8:12] not in _HEIF_BRANDS,
    "audio/wav": lambda d: d[:4] == b"RIFF" and d[8:12] == b"WAVE",
    "audio/webm": lambda d: d.startswith(b"\x1a\x45\xdf\xa3"),
}


STORABLE_TYPES = frozenset(_MAGIC)  # the types a store can keep: each has its check


def sniff(data: bytes) -> str | None:
    """The type the file's first bytes show (of those we can store), or None; MPEG-4 reads as video/mp4."""
    return next((mime for mime, check in _MAGIC.items() if mime != "audio/mp4" and check(data)), None)


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
    check = _MAGIC.get(mime)
    return check is not None and check(data)
