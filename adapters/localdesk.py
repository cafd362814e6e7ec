"""The local desk: a page at /desk and a JSON API for engineers, behind a bearer token (DESK_TOKEN).

Used when Slack is not configured; when it is, both act on the same cases through bot.desk.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from adapters.base import Channel
from bot import canned
from bot.app import Bot
from bot.attachments import STORABLE_TYPES, AttachmentRejected
from bot.desk import GOODWILL, UNITS_PAGE, DeskError
from bot.http import PAGE_HEADERS, WEB, ApiError, json_object
from bot.messages import Attachment
from bot.report import PeriodError, build_report, parse_period, render_figures, to_csv
from bot.status import CaseStatus
from bot.store.clock import utcnow

MAX_NAME = 80
DEFAULT_ENGINEER = "Engineer"  # the name of an action that gives none
MAX_STEP_FILES = 5  # files with one guidance step
# The desk holds the engineers' token in the page: another site must not frame it (clickjacking).
_DESK_HEADERS = {
    **PAGE_HEADERS,
    "Content-Security-Policy": PAGE_HEADERS["Content-Security-Policy"] + "; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
# A customer's file is downloaded, never rendered as a page of ours: no scripts, no framing, no sniffing.
_FILE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Cache-Control": "private, no-store",
}


class LocalDesk(Channel):
    """The engineers' page and API; it reads the database, so nothing goes to it through the outbox."""

    name = "localdesk"

    def __init__(self, bot: Bot) -> None:
        self.bot = bot
        token = bot.settings.desk_token
        self.token = token.get_secret_value() if token else None
        self.replies = canned.load(bot.settings.desk_replies_file)

    def routes(self) -> Sequence[BaseRoute]:
        desk = self.bot.desk
        return [
            Route("/desk", self.page),
            Route("/desk/report", self.report_page),
            Route("/api/desk/report", self._guard(self._report), methods=["GET"]),
            Route("/api/desk/report.html", self._guard(self._report), methods=["GET"]),
            Route("/api/desk/report.csv", self._guard(self._report), methods=["GET"]),
            Route("/api/desk/cases", self._guard(self._list), methods=["GET"]),
            Route("/api/desk/cases/{ref}", self._guard(self._get), methods=["GET"]),
            Route("/api/desk/cases/{ref}/messages", self._guard(self._message), methods=["POST"]),
            Route("/api/desk/cases/{ref}/seen", self._guard(self._seen), methods=["POST"]),
            Route("/api/desk/cases/{ref}/typing", self._guard(self._typing), methods=["POST"]),
            Route("/api/desk/cases/{ref}/replies", self._guard(self._replies), methods=["GET"]),
            Route("/api/desk/cases/{ref}/claim", self._guard(self._action(desk.claim)), methods=["POST"]),
            Route("/api/desk/cases/{ref}/ask", self._guard(self._ask), methods=["POST"]),
            Route("/api/desk/cases/{ref}/method", self._guard(self._method), methods=["POST"]),
            Route(
                "/api/desk/cases/{ref}/units/{serial}/correct", self._guard(self._correct), methods=["POST"]
            ),
            Route("/api/desk/cases/{ref}/close", self._guard(self._action(desk.close)), methods=["POST"]),
            Route("/api/desk/cases/{ref}/fulfil", self._guard(self._fulfil), methods=["POST"]),
            # A guidance step with files: multipart, under the server's upload size limit (paths ending /files).
            Route("/api/desk/cases/{ref}/fulfil/files", self._guard(self._fulfil), methods=["POST"]),
            Route("/api/desk/credits", self._guard(self._credits), methods=["GET"]),
            Route("/api/desk/cases/{ref}/attachments/{attachment_id:int}", self._guard(self._attachment)),
        ]

    async def page(self, request: Request) -> Response:
        return FileResponse(WEB / "desk.html", headers=_DESK_HEADERS)

    async def report_page(self, request: Request) -> Response:
        return FileResponse(WEB / "report.html", headers=_DESK_HEADERS)

    # --- verify -------------------------------------------------------------------------------------------

    def _guard(
        self, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            if self.token is None:
                return JSONResponse(
                    {"error": "the local desk is off: set DESK_TOKEN in .env and restart"}, status_code=503
                )
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), self.token.encode()):
                return JSONResponse(
                    {"error": "a valid desk token is required (Authorization: Bearer ...)"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
            return await handler(request)  # ApiError and DeskError are answered by the app (bot.http)

        return guarded

    # --- handlers -----------------------------------------------------------------------------------------

    async def _list(self, request: Request) -> Response:
        params = request.query_params
        status = params.get("status") or None
        if status is not None and status not in set(CaseStatus):
            raise ApiError(422, f"status must be one of {', '.join(CaseStatus)}")
        unassigned = params.get("unassigned", "") in ("1", "true")
        assignee = (params.get("assignee") or "").strip()[:MAX_NAME] or None
        channel = params.get("channel") or None
        if channel is not None and not (len(channel) <= 32 and channel.replace("_", "").isalnum()):
            raise ApiError(422, "channel must be a channel's name, such as webchat or telegram")
        query = (params.get("q") or "")[:64] or None

        def read() -> dict[str, Any]:
            desk = self.bot.desk
            cases = desk.list_cases(
                status=status, query=query, assignee=assignee, unassigned=unassigned, channel=channel
            )
            return {"cases": cases, **desk.list_facets()}

        return JSONResponse(await asyncio.to_thread(read))

    async def _act(
        self, request: Request, data: dict[str, Any], desk_action: Callable[..., Any], /, **fields: Any
    ) -> Response:
        """A desk action on the request's case, as the engineer the request names; its result as the answer."""
        return JSONResponse(
            await asyncio.to_thread(desk_action, _ref(request), engineer=_engineer(request, data), **fields)
        )

    async def _seen(self, request: Request) -> Response:
        data = await json_object(request)
        message_id = data.get("message_id")
        if not isinstance(message_id, int) or isinstance(message_id, bool) or not 0 <= message_id < 2**63:
            raise ApiError(422, "message_id must be the id of the last message shown (a whole number)")
        return JSONResponse(await asyncio.to_thread(self.bot.desk.mark_seen, _ref(request), message_id))

    async def _typing(self, request: Request) -> Response:
        """The engineer is writing a reply (the page says so every few seconds): the web chat shows it."""
        data = await json_object(request)
        name = _engineer(request, data)
        result = await asyncio.to_thread(
            self.bot.desk.typing, _ref(request), engineer=None if name == DEFAULT_ENGINEER else name
        )
        return JSONResponse(result)

    async def _replies(self, request: Request) -> Response:
        case = await asyncio.to_thread(self.bot.desk.get_case, _ref(request), units_limit=1)
        replies = self.replies.for_case(
            case["language"], case_ref=case["ref"], customer=case["customer"] or case["company"] or ""
        )
        return JSONResponse({"language": case["language"], "replies": replies})

    async def _get(self, request: Request) -> Response:
        offset = _count(request, "units_offset", default=0, most=2**31 - 1)
        limit = _count(request, "units_limit", default=UNITS_PAGE, most=UNITS_PAGE)
        case = await asyncio.to_thread(
            self.bot.desk.get_case, _ref(request), units_offset=offset, units_limit=max(limit, 1)
        )
        return JSONResponse(case)

    async def _message(self, request: Request) -> Response:
        data = await json_object(request)
        text = data.get("text")
        internal = data.get("internal", False)
        if not isinstance(text, str) or not text.strip():
            raise ApiError(422, "text is required and must be a non-empty string")
        if not isinstance(internal, bool):
            raise ApiError(422, "internal must be true or false")
        action = self.bot.desk.note if internal else self.bot.desk.reply
        answer = await self._act(request, data, action, text=text)
        self.bot.engine.outbox_signal.set()
        return answer

    async def _ask(self, request: Request) -> Response:
        data = await json_object(request)
        question = data.get("question")
        if not isinstance(question, str) or not question.strip():
            raise ApiError(422, "question is required and must be a non-empty string")
        return await self._act(request, data, self.bot.desk.ask_customer, question=question)

    async def _method(self, request: Request) -> Response:
        data = await json_object(request)
        method, reason = data.get("method"), data.get("reason")
        if not isinstance(method, str):
            raise ApiError(422, "method is required")
        if reason is not None and not isinstance(reason, str):
            raise ApiError(422, "reason must be a string")
        goodwill = data.get("goodwill")
        if goodwill is not None and goodwill not in GOODWILL:
            raise ApiError(422, f"goodwill must be one of {', '.join(GOODWILL)}")
        clauses = data.get("clauses")
        if clauses is not None and not (
            isinstance(clauses, list) and all(isinstance(c, str) for c in clauses)
        ):
            raise ApiError(422, "clauses must be a list of clause ids")
        return await self._act(
            request,
            data,
            self.bot.desk.choose_method,
            method=method,
            reason=reason,
            clauses=clauses,
            goodwill=goodwill,
        )

    async def _correct(self, request: Request) -> Response:
        data = await json_object(request)
        note = data.get("note")
        if note is not None and not isinstance(note, str):
            raise ApiError(422, "note must be a string")
        serial = str(request.path_params["serial"])
        if len(serial) > 64:
            raise DeskError("no such unit")
        changes = {key: value for key, value in data.items() if key not in ("note", "engineer")}
        return await self._act(
            request, data, self.bot.desk.correct_unit, serial=serial, changes=changes, note=note
        )

    async def _fulfil(self, request: Request) -> Response:
        """/fulfil: JSON {"action", "text"}; /fulfil/files: multipart/form-data with the same fields and up to
        MAX_STEP_FILES "file" parts for a guidance step, each kept by the attachment store (its types and size
        limit) and sent to the customer with the step."""
        uploads: list[UploadFile] = []
        if request.url.path.endswith("/files"):
            if not request.headers.get("content-type", "").startswith("multipart/form-data"):
                raise ApiError(
                    422, "send the step as multipart/form-data: action, text and the files as 'file'"
                )
            try:
                form = await request.form(max_files=MAX_STEP_FILES, max_fields=8)
            except (MultiPartException, HTTPException):
                raise ApiError(
                    422, f"the multipart body could not be read (at most {MAX_STEP_FILES} files per step)"
                ) from None
            data: dict[str, Any] = {k: v for k, v in form.items() if isinstance(v, str)}
            uploads = [v for v in form.getlist("file") if isinstance(v, UploadFile)]
        else:
            data = await json_object(request)
        action, text = data.get("action"), data.get("text", "")
        if not isinstance(action, str) or not action:
            raise ApiError(422, "action is required (the case's fulfilment.actions say which)")
        if not isinstance(text, str):
            raise ApiError(422, "text must be a string")
        if uploads and action != "guide":
            raise ApiError(422, "files can only be sent with a guidance step (action 'guide')")
        files = [await self._keep(upload) for upload in uploads]
        return await self._act(request, data, self.bot.desk.fulfil, action=action, text=text, files=files)

    async def _keep(self, upload: UploadFile) -> Attachment:
        """An engineer's file into the attachment store, or a 4xx that says what would be accepted."""
        store = self.bot.attachments
        data = await upload.read()
        name = (upload.filename or "file")[:255]
        mime = upload.content_type or "application/octet-stream"
        kind = "photo" if mime.startswith("image/") else "document"
        try:
            return await asyncio.to_thread(store.save, data, name=name, mime=mime, kind=kind)
        except AttachmentRejected as error:
            if error.reason == "too_large":
                limit = store.max_bytes / 1_000_000
                raise ApiError(413, f"{name}: larger than the {limit:g} MB limit for a file") from None
            accepted = ", ".join(sorted(store.allowed_types))
            raise ApiError(
                415,
                f"{name}: this type of file is not accepted (or its content is not what its type says); "
                f"accepted: {accepted}",
            ) from None

    async def _credits(self, request: Request) -> Response:
        company = (request.query_params.get("company") or "")[:255] or None
        return JSONResponse({"credits": await asyncio.to_thread(self.bot.desk.credits, company=company)})

    def _action(self, action: Callable[..., dict[str, Any]]) -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request) -> Response:
            return await self._act(request, await json_object(request), action)

        return handler

    async def _report(self, request: Request) -> Response:
        """The report for ?from=&to= (ISO dates, defaults as the command's) as JSON, the page's HTML figures
        or CSV, by the path's ending."""
        now = utcnow()
        try:
            period = parse_period(
                request.query_params.get("from") or None,
                request.query_params.get("to") or None,
                today=now.date(),
            )
        except PeriodError as error:
            raise ApiError(422, str(error).replace("--from", "from").replace("--to", "to")) from None
        report = await asyncio.to_thread(build_report, self.bot.db, period, policy=self.bot.policy, now=now)
        private = {"Cache-Control": "private, no-store", "X-Content-Type-Options": "nosniff"}
        if request.url.path.endswith(".csv"):
            name = f"warranty-report-{period.start.isoformat()}-{period.end.isoformat()}.csv"
            return Response(
                to_csv(report),
                media_type="text/csv; charset=utf-8",
                headers={**private, "Content-Disposition": f'attachment; filename="{name}"'},
            )
        if request.url.path.endswith(".html"):
            return HTMLResponse(render_figures(report), headers={**_DESK_HEADERS, **private})
        return JSONResponse(report.as_dict(), headers=private)

    async def _attachment(self, request: Request) -> Response:
        stored = await asyncio.to_thread(
            self.bot.desk.attachment, _ref(request), request.path_params["attachment_id"]
        )
        path = self.bot.attachments.path(stored.path)
        # Only the types whose first bytes were checked keep their type; anything else (a row from before
        # the checks, a type since removed) is bytes to download.
        mime = stored.mime if stored.mime in STORABLE_TYPES else "application/octet-stream"
        return FileResponse(
            path,
            media_type=mime,
            filename=stored.name,
            content_disposition_type="attachment",
            headers=_FILE_HEADERS,
        )


def _ref(request: Request) -> str:
    ref = str(request.path_params["ref"])
    if len(ref) > 40:
        raise DeskError("no such case")
    return ref


def _count(request: Request, name: str, *, default: int, most: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 10) or int(raw) > most:
        raise ApiError(422, f"{name} must be a whole number from 0 to {most}")
    return int(raw)


def _engineer(request: Request, data: dict[str, Any]) -> str:
    name = data.get("engineer") or request.headers.get("x-engineer") or DEFAULT_ENGINEER
    if not isinstance(name, str) or not name.strip():
        raise ApiError(422, "engineer must be a name")
    return name.strip()[:MAX_NAME]


def from_settings(bot: Bot) -> LocalDesk:
    return LocalDesk(bot)
