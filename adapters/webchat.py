"""The web chat channel: a chat page at `/` and its JSON API; the message log is what the customer reads.

API: POST /api/webchat/sessions -> 201 {"session_id"}; POST /api/webchat/sessions/{id}/messages
{"text", "client_id"?} -> 202 {"id"}; POST /api/webchat/sessions/{id}/files (multipart "file") -> 202 {"id"};
GET /api/webchat/sessions/{id}/messages?after=<id> -> 200 {"messages": [...], "typing": null or {"engineer": first
name or null}} (an engineer is writing on the local desk; each file listed with its "url");
GET /api/webchat/sessions/{id}/files/{file id} -> the file (an engineer's guidance file, or the customer's own).
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from adapters.base import Channel
from bot import channels
from bot.app import Bot
from bot.attachments import STORABLE_TYPES, AttachmentRejected
from bot.http import PAGE_HEADERS, WEB, ApiError, json_object
from bot.messages import Attachment, InboundMessage, OutboundMessage
from bot.outbox import Delivered
from bot.store.clock import utcnow

CHANNEL = "webchat"
MAX_CLIENT_ID = 128
MAX_ID = 2**31 - 1  # ids are 32-bit integers in PostgreSQL
_MESSAGE_ID = re.compile(r"[0-9]{1,10}")  # ASCII digits: str.isdigit() also takes "²"
_SESSION_PREFIX = "webchat:"


# --- verify: sessions are unguessable ids kept in the database -----------------------------------------


def _create_session(bot: Bot, language: str | None) -> str:
    session_id = secrets.token_urlsafe(24)
    value = {"created_at": utcnow().isoformat(), "language": language}
    channels.kv_put(bot.db, _SESSION_PREFIX + session_id, value)
    return session_id


def _session(bot: Bot, session_id: str) -> dict[str, Any]:
    if len(session_id) > 64:
        raise ApiError(404, "unknown session")
    stored = channels.kv_get(bot.db, _SESSION_PREFIX + session_id)
    if stored is None:
        raise ApiError(404, "unknown session")
    return stored[0]


# --- parse ----------------------------------------------------------------------------------------------


def _text_message(data: Mapping[str, Any], max_chars: int) -> tuple[str, str | None]:
    text = data.get("text")
    if not isinstance(text, str):
        raise ApiError(422, "text is required and must be a string")
    if not text.strip():
        raise ApiError(422, "text must not be empty")
    _check_length(text, max_chars)
    client_id = data.get("client_id")
    if client_id is not None and (not isinstance(client_id, str) or not 0 < len(client_id) <= MAX_CLIENT_ID):
        raise ApiError(422, f"client_id must be a string of 1 to {MAX_CLIENT_ID} characters")
    return text, client_id


def _check_length(text: str, max_chars: int) -> None:
    # The conversation reads MAX_TEXT_CHARS of a message; storing more (twice: inbox and message log)
    # would only let one visitor fill the database.
    if len(text) > max_chars:
        raise ApiError(422, f"text is too long (at most {max_chars} characters)")


def _inbound(
    session_id: str,
    *,
    external_id: str,
    text: str = "",
    attachments: tuple[Attachment, ...] = (),
    language: str | None = None,
    client_id: str | None = None,
) -> InboundMessage:
    return channels.inbound(
        CHANNEL,
        external_id,
        session_id,
        text=text,
        attachments=attachments,
        locale_hint=language,
        sender_name="Web chat visitor",
        raw={"client_id": client_id} if client_id else {},
    )


# --- the channel ----------------------------------------------------------------------------------------


class WebChat(Channel):
    """The embedded web chat; replies need no delivery: the page reads the message log."""

    name = CHANNEL
    sends_files = True  # listed with the message, downloaded from the chat (get_file)

    def __init__(self, bot: Bot) -> None:
        self.bot = bot

    def routes(self) -> Sequence[BaseRoute]:
        return [
            Route("/", self.page),
            Route("/api/webchat/sessions", self.create_session, methods=["POST"]),
            Route("/api/webchat/sessions/{session_id}/messages", self.post_message, methods=["POST"]),
            Route("/api/webchat/sessions/{session_id}/messages", self.list_messages, methods=["GET"]),
            Route("/api/webchat/sessions/{session_id}/files", self.post_file, methods=["POST"]),
            Route(
                "/api/webchat/sessions/{session_id}/files/{attachment_id:int}", self.get_file, methods=["GET"]
            ),
            Mount("/static", app=StaticFiles(directory=WEB / "static"), name="static"),
        ]

    def sender(self) -> WebChat:
        return self

    async def send(self, message: OutboundMessage) -> Delivered:
        return Delivered()

    async def page(self, request: Request) -> Response:
        return FileResponse(WEB / "chat.html", headers=PAGE_HEADERS)

    async def create_session(self, request: Request) -> Response:
        data = await json_object(request)
        language = data.get("language")
        if language is not None and not (isinstance(language, str) and 2 <= len(language) <= 16):
            raise ApiError(422, "language must be a language code such as 'en' or 'es'")
        session_id = await asyncio.to_thread(_create_session, self.bot, language)
        return JSONResponse({"session_id": session_id}, status_code=201)

    async def post_message(self, request: Request) -> Response:
        session_id = request.path_params["session_id"]
        details = await asyncio.to_thread(_session, self.bot, session_id)
        text, client_id = _text_message(await json_object(request), self.bot.settings.max_text_chars)
        external_id = f"{session_id}:{client_id or secrets.token_hex(12)}"
        message = _inbound(
            session_id,
            external_id=external_id,
            text=text,
            language=details.get("language"),
            client_id=client_id,
        )
        accepted = await self.bot.engine.accept_soon(message)
        return JSONResponse(
            {"id": accepted.inbox_id or external_id, "duplicate": accepted.duplicate}, status_code=202
        )

    async def post_file(self, request: Request) -> Response:
        session_id = request.path_params["session_id"]
        details = await asyncio.to_thread(_session, self.bot, session_id)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise ApiError(422, "send the file as multipart/form-data in the field 'file'")
        try:
            # A caption is text like any message; a larger field is refused while it streams in.
            form = await request.form(
                max_files=1, max_fields=4, max_part_size=self.bot.settings.max_text_chars * 4 + 1024
            )
        except (MultiPartException, HTTPException):
            raise ApiError(422, "the multipart body could not be read") from None
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(422, "the field 'file' is required")
        caption = form.get("text")
        if isinstance(caption, str):
            _check_length(caption, self.bot.settings.max_text_chars)  # before the file is kept
        data = await upload.read()
        name = upload.filename or "file"
        mime = upload.content_type or "application/octet-stream"
        kind = "photo" if mime.startswith("image/") else "document"
        try:
            attachment = await asyncio.to_thread(
                self.bot.attachments.save, data, name=name, mime=mime, kind=kind
            )
        except AttachmentRejected as error:
            attachment = self.bot.attachments.rejected(name, error.reason)
        message = _inbound(
            session_id,
            external_id=f"{session_id}:{secrets.token_hex(12)}",
            text=caption if isinstance(caption, str) else "",
            attachments=(attachment,),
            language=details.get("language"),
        )
        accepted = await self.bot.engine.accept_soon(message)
        return JSONResponse(
            {"id": accepted.inbox_id, "rejected": attachment.kind == "rejected"}, status_code=202
        )

    async def list_messages(self, request: Request) -> Response:
        session_id = request.path_params["session_id"]
        await asyncio.to_thread(_session, self.bot, session_id)
        raw_after = request.query_params.get("after", "0")
        if not _MESSAGE_ID.fullmatch(raw_after) or int(raw_after) > MAX_ID:
            raise ApiError(422, "after must be a message id (a non-negative integer)")
        after = int(raw_after)

        def read() -> dict[str, Any]:
            messages = self.bot.engine.transcript(CHANNEL, session_id, after=after)
            for message in messages:
                for file in message["attachments"]:
                    file["url"] = f"/api/webchat/sessions/{session_id}/files/{file['id']}"
            return {"messages": messages, "typing": self.bot.desk.typing_in(CHANNEL, session_id)}

        return JSONResponse(await asyncio.to_thread(read))

    async def get_file(self, request: Request) -> Response:
        """A file of this chat (one an engineer sent with a guidance step, or the customer's own)."""
        session_id = request.path_params["session_id"]
        await asyncio.to_thread(_session, self.bot, session_id)
        attachment_id = request.path_params["attachment_id"]
        if attachment_id > MAX_ID:
            raise ApiError(404, "no such file in this chat")
        stored = await asyncio.to_thread(
            self.bot.engine.conversation_file, CHANNEL, session_id, attachment_id
        )
        if stored is None:
            raise ApiError(404, "no such file in this chat")
        mime = stored.mime if stored.mime in STORABLE_TYPES else "application/octet-stream"
        return FileResponse(
            self.bot.attachments.path(stored.path),
            media_type=mime,
            filename=stored.name,
            content_disposition_type="attachment",
            headers={"Cache-Control": "private, no-store", "X-Content-Type-Options": "nosniff"},
        )


def from_settings(bot: Bot) -> WebChat:
    return WebChat(bot)
