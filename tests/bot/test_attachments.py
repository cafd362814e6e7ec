"""Attachment storage (bot/attachments.py): each stored type must look like that type in its first bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.attachments import AttachmentRejected, AttachmentStore, sniff
from bot.config import Settings

HTML = b"<!doctype html><html><script>alert(document.domain)</script></html>"
EXE = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + b"\x00" * 48
MP3_FRAME = b"\xff\xfb\x90\x64" + b"\x00" * 200  # MPEG-1 layer III, 128 kbit/s, 44.1 kHz
MP3_ID3 = b"ID3\x04\x00\x00\x00\x00\x00\x00" + MP3_FRAME
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 40
WAV = b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 40
HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 40  # an iPhone photo's first bytes
MP4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\x00" * 40
AVI = b"RIFF\x24\x00\x00\x00AVI LIST" + b"\x00" * 40
GOOD = {
    "image/jpeg": b"\xff\xd8\xff\xe0\x00\x10JFIF" + b"\x00" * 20,
    "image/png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 20,
    "image/gif": b"GIF89a" + b"\x00" * 20,
    "image/webp": WEBP,
    "image/heic": HEIC,
    "application/pdf": b"%PDF-1.7\n" + b"\x00" * 20,
    "audio/amr": b"#!AMR\n" + b"\x00" * 20,
    "audio/ogg": b"OggS\x00\x02" + b"\x00" * 20,
    "audio/mpeg": MP3_FRAME,
}


@pytest.fixture
def store(tmp_path: Path) -> AttachmentStore:
    """The store with the default ATTACHMENT_TYPES."""
    types = Settings(_env_file=None).allowed_attachment_types  # type: ignore[call-arg]
    return AttachmentStore(root=tmp_path, max_bytes=100_000, allowed_types=types)


@pytest.mark.parametrize("mime", sorted(GOOD))
def test_every_default_type_is_stored_when_it_looks_like_itself(store: AttachmentStore, mime: str) -> None:
    saved = store.save(GOOD[mime], name="f", mime=mime, kind="document")
    assert store.path(saved.ref).read_bytes() == GOOD[mime]


def test_every_default_type_has_a_check(store: AttachmentStore) -> None:
    assert store.allowed_types == set(GOOD)


@pytest.mark.parametrize(
    "data",
    [
        HTML,
        EXE,
        b"",
        b"\xff\xd8\xff\xe0",
        b"OggS"[:3],
        b"\xff\xfb\xf0\x64" + b"\x00" * 8,
        b"\xff\xe8\x90\x64" + b"\x00" * 8,
    ],
)
def test_html_an_exe_or_a_broken_header_is_not_mpeg_audio(store: AttachmentStore, data: bytes) -> None:
    with pytest.raises(AttachmentRejected) as rejected:
        store.save(data, name="voice.mp3", mime="audio/mpeg", kind="voice")
    assert rejected.value.reason == "type"
    assert list(store.root.rglob("*")) == []


def test_an_id3_tagged_mp3_is_mpeg_audio(store: AttachmentStore) -> None:
    assert store.save(MP3_ID3, name="voice.mp3", mime="audio/mpeg", kind="voice").mime == "audio/mpeg"


@pytest.mark.parametrize("data", [WAV, AVI, b"RIFF" + HTML])
def test_a_riff_file_that_is_not_webp_is_not_a_webp_image(store: AttachmentStore, data: bytes) -> None:
    with pytest.raises(AttachmentRejected):
        store.save(data, name="photo.webp", mime="image/webp", kind="photo")


@pytest.mark.parametrize("mime", sorted(GOOD))
def test_html_is_refused_under_every_type(store: AttachmentStore, mime: str) -> None:
    with pytest.raises(AttachmentRejected):
        store.save(HTML, name="f", mime=mime, kind="document")


def test_a_type_added_without_a_check_is_refused(tmp_path: Path) -> None:
    store = AttachmentStore(
        root=tmp_path, max_bytes=100, allowed_types=frozenset({"text/html", "image/svg+xml"})
    )
    for mime in store.allowed_types:
        with pytest.raises(AttachmentRejected):
            store.save(HTML, name="f", mime=mime, kind="document")


def test_sniff_names_the_type_the_bytes_show() -> None:
    assert {mime: sniff(data) for mime, data in GOOD.items()} == {mime: mime for mime in GOOD}
    assert sniff(HTML) is None
    assert sniff(EXE) is None
    assert sniff(WAV) == "audio/wav"


def test_a_heic_photo_is_told_from_an_mp4_video() -> None:
    assert sniff(HEIC) == "image/heic"
    assert sniff(MP4) == "video/mp4"


def test_an_mp4_is_not_kept_as_a_heic_photo(store: AttachmentStore) -> None:
    with pytest.raises(AttachmentRejected):
        store.save(MP4, name="photo.heic", mime="image/heic", kind="photo")
