"""Fuzzing every webhook and API endpoint of the one server (signed channels with correctly signed garbage too):
never a 500, never a dead worker, the database consistent afterwards."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, urlencode

import httpx
import pytest
from defusedxml import ElementTree
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from adapters import teams, telegram, wechat, whatsapp
from bot.app import build
from bot.config import Settings
from bot.store import InboxItem, session_scope
from bot.store.clock import utcnow
from tests.all_channels import DESK_AUTH, Stack, consistency_problems, database, payload, running
from tests.fakes.slack import as_form, signed
from tests.fakes.wechat import signed_query
from tests.fakes.whatsapp import sign
from tests.support import wait_until

EXAMPLES = {"sqlite": 80, "postgres": 20}  # per endpoint; PostgreSQL runs a smaller second pass
# What a fuzzed request may be answered with; a 5xx never, whatever was sent.
CLIENT_ERRORS = frozenset({400, 401, 403, 404, 405, 409, 413, 415, 422})


@dataclass
class Fuzzed:
    stack: Stack
    examples: int
    session: str  # a real web chat session, so that message bodies get past the session check
    case_ref: str  # a real case, so that desk actions get past the case lookup


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def fuzzed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    folder = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    with database(request.param, folder) as url, running(url, folder) as stack, stack.client() as http:
        session = http.post("/api/webchat/sessions", json={"language": "en"}).json()["session_id"]
        for text in ("hello", "CSP2402A0153", "Display shows E07 and shuts down under load", "human"):
            assert (
                http.post(f"/api/webchat/sessions/{session}/messages", json={"text": text}).status_code == 202
            )
        case_ref = wait_until(lambda: next(iter(stack.bot.desk.list_cases()), {}).get("ref"), what="a case")
        yield Fuzzed(stack=stack, examples=EXAMPLES[request.param], session=session, case_ref=str(case_ref))


# --- strategies -----------------------------------------------------------------------------------------------

NASTY = (
    "",
    " ",
    "\x00",
    "\ud800",
    "\u202e\u0644\u0627",
    "<script>alert(1)</script>",
    "{{ 7*191 }}",
    "{% raw %}",
    "'; DROP TABLE inboxitem; --",
    "9" * 300,
    "é" * 600,
    "🔧" * 3,
    "\r\n\t",
    "+44 7700 900123",
    "CSP2402A0153",
    "CSP2402A0153-CSP2402A0160",
    "WR-2026-000001",
    "cause:normal",
    "proof:none",
    "human",
    "1",
    "/start",
    "note: x",
    "<!channel>",
    "../../etc/passwd",
    "%s%n%x",
    "null",
    "0" * 40,
)
TEXT = st.one_of(st.text(max_size=30), st.sampled_from(NASTY))
SCALAR = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(), TEXT
)
KEY = st.one_of(
    st.text(max_size=8),
    st.sampled_from(
        (
            "type",
            "text",
            "id",
            "user",
            "event",
            "message",
            "from",
            "chat",
            "value",
            "actions",
            "view",
            "payload",
            "entities",
            "attachments",
            "name",
            "channel",
            "thread_ts",
            "callback_id",
            "private_metadata",
        )
    ),
)
JSON = st.recursive(
    SCALAR,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(KEY, children, max_size=4),
    max_leaves=10,
)
HEADER_VALUE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(
    str.strip
)
# Headers a client may send anywhere; never ones that frame the request (Host, Content-Length, Transfer-Encoding).
EXTRA_HEADERS = st.dictionaries(
    st.sampled_from(
        (
            "Accept",
            "Accept-Encoding",
            "Accept-Language",
            "Cookie",
            "X-Forwarded-For",
            "Origin",
            "X-Slack-Retry-Num",
            "X-Slack-Retry-Reason",
            "X-Engineer",
            "User-Agent",
        )
    ),
    HEADER_VALUE,
    max_size=3,
)
CONTENT_TYPES = st.sampled_from(
    (
        "application/json",
        "application/x-www-form-urlencoded",
        "text/xml",
        "text/plain",
        "multipart/form-data; boundary=x",
        "application/json; charset=latin-1",
        "",
    )
)


def sendable(text: str) -> str:
    """Text an HTTP client can put in a URL (a lone surrogate cannot be encoded at all)."""
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def encode(document: Any, ascii_only: bool) -> bytes:
    """JSON bytes; without ascii_only, lone surrogates become invalid UTF-8, as a broken client would send."""
    return json.dumps(document, ensure_ascii=ascii_only, allow_nan=True).encode("utf-8", "surrogatepass")


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*prefix, index))


@st.composite
def mutated(draw: st.DrawFn, sample: Any) -> Any:
    """A real-shaped document with a few values replaced by garbage (or removed)."""
    document = copy.deepcopy(sample)
    paths = [p for p in _paths(document) if p]
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        path = draw(st.sampled_from(paths))
        parent: Any = document
        try:
            for part in path[:-1]:
                parent = parent[part]
            if draw(st.integers(min_value=0, max_value=4)) == 0 and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = draw(JSON)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change removed this place
    return document


def json_sample(channel: str, name: str) -> Any:
    return json.loads(payload(channel, name))


RAW = st.one_of(st.binary(max_size=300), st.builds(encode, JSON, st.booleans()))


def bodies(channel: str, names: Sequence[str]) -> st.SearchStrategy[bytes]:
    """Mostly mutated samples of the channel, sometimes any JSON or bytes at all."""
    samples = [json_sample(channel, name) for name in names]
    shaped = st.sampled_from(samples).flatmap(mutated)
    return st.one_of(st.builds(encode, shaped, st.booleans()), st.builds(encode, shaped, st.booleans()), RAW)


# --- the runner ---------------------------------------------------------------------------------------------------


def fuzz(
    fuzzed: Fuzzed,
    strategy: st.SearchStrategy[Any],
    request: Callable[[httpx.Client, Any], tuple[httpx.Response, frozenset[int]]],
) -> None:
    """Send what `strategy` draws; every answer must be one of the statuses `request` allows, never a 5xx.

    Problems are collected rather than raised inside Hypothesis, so that one run reports every kind found.
    """
    problems: dict[tuple[int, str], str] = {}
    with fuzzed.stack.client() as http:

        @settings(
            max_examples=fuzzed.examples,
            deadline=None,
            derandomize=True,
            database=None,
            phases=(Phase.explicit, Phase.generate),  # shrinking would replay hundreds of requests
            suppress_health_check=list(HealthCheck),
        )
        @given(strategy)
        def run(drawn: Any) -> None:
            try:
                response, allowed = request(http, drawn)
            except httpx.TransportError as error:  # the server dropped the connection
                problems.setdefault((0, type(error).__name__), f"{error!r} for {drawn!r:.800}")
                return
            if response.status_code not in allowed or "Traceback" in response.text:
                key = (response.status_code, response.text[:60])
                problems.setdefault(key, f"{response.status_code} {response.text[:200]!r} for {drawn!r:.800}")

        run()
        fuzzed.stack.settle()
        assert http.get("/healthz").status_code == 200
    assert not problems, "\n".join(problems.values())


# --- web chat -----------------------------------------------------------------------------------------------------


def test_web_chat_sessions(fuzzed: Fuzzed) -> None:
    def request(
        http: httpx.Client, drawn: tuple[bytes, str, dict[str, str]]
    ) -> tuple[httpx.Response, frozenset[int]]:
        body, content_type, headers = drawn
        answer = http.post(
            "/api/webchat/sessions", content=body, headers={"Content-Type": content_type, **headers}
        )
        return answer, frozenset({201, 400, 415, 422})  # 415: a body not declared JSON

    language = st.fixed_dictionaries({}, optional={"language": JSON})
    fuzz(
        fuzzed,
        st.tuples(st.one_of(RAW, st.builds(encode, language, st.booleans())), CONTENT_TYPES, EXTRA_HEADERS),
        request,
    )


def test_web_chat_messages(fuzzed: Fuzzed) -> None:
    sessions = st.one_of(
        st.just(fuzzed.session),
        st.just(fuzzed.session),
        TEXT,
        st.just(fuzzed.session[:-1] + "A"),
        st.just(fuzzed.session + "/../x"),
    )
    message = st.fixed_dictionaries(
        {}, optional={"text": st.one_of(TEXT, JSON), "client_id": st.one_of(TEXT, JSON)}
    )
    body = st.one_of(
        st.builds(encode, message, st.booleans()), st.builds(encode, message, st.booleans()), RAW
    )
    after = st.one_of(st.integers(min_value=-5, max_value=10**20).map(str), TEXT)

    def request(
        http: httpx.Client, drawn: tuple[str, bytes, str, bool, dict[str, str]]
    ) -> tuple[httpx.Response, frozenset[int]]:
        session, content, after_value, read, headers = drawn
        path = f"/api/webchat/sessions/{quote(session.encode('utf-8', 'surrogatepass'), safe='')}/messages"
        if read:
            return http.get(path, params={"after": sendable(after_value)}, headers=headers), frozenset(
                {200, 400, 404, 422}
            )
        return (
            http.post(path, content=content, headers={"Content-Type": "application/json", **headers}),
            frozenset({202, 400, 404, 405, 415, 422}),
        )

    fuzz(fuzzed, st.tuples(sessions, body, after, st.booleans(), EXTRA_HEADERS), request)


MAGIC = st.sampled_from(
    (
        b"",
        b"%PDF-1.4\n",
        b"\x89PNG\r\n\x1a\n",
        b"\xff\xd8\xff\xe0",
        b"MZ\x90\x00",
        b"GIF89a",
        b"RIFF\x00\x00\x00\x00WEBP",
        b"#!AMR\n",
        b"OggS",
    )
)
MIME = st.one_of(
    st.sampled_from(
        (
            "application/pdf",
            "image/png",
            "image/jpeg",
            "application/x-msdownload",
            "image/svg+xml",
            "text/html",
            "audio/ogg",
            "image/webp",
        )
    ),
    HEADER_VALUE,
)


def test_web_chat_files(fuzzed: Fuzzed) -> None:
    name = st.one_of(
        st.text(alphabet=st.characters(codec="utf-8", exclude_characters='\r\n"\\'), max_size=40),
        st.sampled_from(("invoice.pdf", "../../../etc/passwd", "setup.exe.pdf", "a" * 300, ".", "")),
    )
    upload = st.tuples(
        name,
        st.builds(lambda magic, rest: magic + rest, MAGIC, st.binary(max_size=200)),
        MIME,
        st.one_of(st.none(), TEXT.filter(lambda t: "\ud800" not in t)),
    )

    def request(
        http: httpx.Client, drawn: tuple[tuple[str, bytes, str, str | None], bool, bytes]
    ) -> tuple[httpx.Response, frozenset[int]]:
        (filename, data, mime, caption), multipart, raw = drawn
        path = f"/api/webchat/sessions/{fuzzed.session}/files"
        if not multipart:
            return http.post(
                path, content=raw, headers={"Content-Type": "multipart/form-data; boundary=b"}
            ), frozenset({400, 422})
        form = {"text": caption} if caption is not None else None
        return http.post(path, files={"file": (filename, data, mime)}, data=form), frozenset({202, 400, 422})

    fuzz(fuzzed, st.tuples(upload, st.integers(0, 5).map(bool), st.binary(max_size=200)), request)


# --- local desk ---------------------------------------------------------------------------------------------------


def test_desk_api(fuzzed: Fuzzed) -> None:
    actions = st.sampled_from(
        (
            "GET",
            "GET /",
            "POST /messages",
            "POST /claim",
            "POST /ask",
            "POST /method",
            "POST /close",
            "GET /attachments/1",
            "GET /attachments/999999999999",
        )
    )
    refs = st.one_of(st.just(fuzzed.case_ref), st.just(fuzzed.case_ref.lower()), TEXT)
    fields = st.fixed_dictionaries(
        {},
        optional={
            "text": JSON,
            "internal": JSON,
            "question": JSON,
            "method": st.one_of(
                st.sampled_from(("factory_repair", "door_to_door", "not_covered", "replacement")), JSON
            ),
            "reason": JSON,
            "clauses": JSON,
            "engineer": JSON,
        },
    )
    body = st.one_of(st.builds(encode, fields, st.booleans()), RAW)
    query = st.fixed_dictionaries(
        {}, optional={"status": st.one_of(st.sampled_from(("open", "closed")), TEXT), "q": TEXT}
    )
    auth: st.SearchStrategy[dict[str, str]] = st.one_of(
        st.just(DESK_AUTH),
        st.just(DESK_AUTH),
        st.just(DESK_AUTH),
        st.fixed_dictionaries({"Authorization": HEADER_VALUE}),
        st.just({}),
    )

    def request(
        http: httpx.Client, drawn: tuple[str, str, bytes, dict[str, Any], dict[str, str]]
    ) -> tuple[httpx.Response, frozenset[int]]:
        action, ref, content, params, headers = drawn
        method, _, suffix = action.partition(" ")
        ref = quote(ref.encode("utf-8", "surrogatepass"), safe="")
        path = "/api/desk/cases" if action == "GET" else f"/api/desk/cases/{ref}{suffix.rstrip('/')}"
        params = {k: sendable(v) for k, v in params.items()}
        answer = http.request(
            method,
            path,
            content=content if method == "POST" else None,
            params=params,
            headers={"Content-Type": "application/json", **headers} if method == "POST" else headers,
        )
        return answer, frozenset({200, 400, 401, 404, 405, 409, 415, 422})

    fuzz(fuzzed, st.tuples(actions, refs, body, query, auth), request)


# --- Telegram -------------------------------------------------------------------------------------------------------


@st.composite
def telegram_updates(draw: st.DrawFn) -> bytes:
    sample = draw(
        st.sampled_from(
            [
                json_sample("telegram", n)
                for n in (
                    "text_start.json",
                    "text_serial.json",
                    "photo.json",
                    "document_invoice.json",
                    "callback_query.json",
                    "edited_message.json",
                )
            ]
        )
    )
    document = draw(mutated(sample))
    if isinstance(document, dict) and draw(st.booleans()):
        document["update_id"] = draw(
            st.integers(min_value=0, max_value=2**40)
        )  # mostly new updates, not redeliveries
    return encode(document, draw(st.booleans()))


def test_telegram_webhook(fuzzed: Fuzzed) -> None:
    secret = fuzzed.stack.bot.settings.telegram_webhook_secret
    assert secret is not None

    def request(
        http: httpx.Client, drawn: tuple[bytes, str | None, dict[str, str]]
    ) -> tuple[httpx.Response, frozenset[int]]:
        body, forged, headers = drawn
        given = secret.get_secret_value() if forged is None else forged
        answer = http.post(
            telegram.WEBHOOK_PATH,
            content=body,
            headers={**headers, "Content-Type": "application/json", telegram.SECRET_HEADER: given},
        )
        return answer, frozenset({200, 400}) if forged is None else frozenset({401, 403})

    forged = st.one_of(st.none(), st.none(), st.none(), HEADER_VALUE)
    fuzz(fuzzed, st.tuples(st.one_of(telegram_updates(), RAW), forged, EXTRA_HEADERS), request)


# --- Slack ----------------------------------------------------------------------------------------------------------


def _slack_command() -> dict[str, str]:
    return dict(parse_qsl(payload("slack", "slash_command.txt").decode(), keep_blank_values=True))


@st.composite
def slack_requests(draw: st.DrawFn) -> tuple[str, bytes, bool]:
    """(path, body, form) for the three Slack endpoints, real-shaped with garbage inside."""
    kind = draw(st.sampled_from(("events", "interactivity", "commands")))
    if kind == "events":
        return (
            "/slack/events",
            draw(
                bodies(
                    "slack", ("event_thread_reply.json", "event_bot_message.json", "url_verification.json")
                )
            ),
            False,
        )
    if kind == "interactivity":
        document = draw(
            st.sampled_from(
                [json_sample("slack", "block_actions.json"), json_sample("slack", "view_submission.json")]
            ).flatmap(mutated)
        )
        text = json.dumps(document, ensure_ascii=draw(st.booleans()))
        # Lone surrogates drawn into the text must reach the server as bytes, not break the drawing.
        form = b"payload=" + quote_plus(text.encode("utf-8", "surrogatepass")).encode()
        body = draw(st.one_of(st.just(form), st.just(form), RAW))
        return "/slack/interactivity", body, True
    command = _slack_command()
    for key in draw(st.lists(st.sampled_from(sorted(command)), max_size=3)):
        if draw(st.booleans()):
            command.pop(key, None)
        else:
            command[key] = draw(TEXT)
    command["text"] = draw(st.one_of(TEXT, st.just(command.get("text", ""))))
    body = urlencode({k: v.encode("utf-8", "surrogatepass") for k, v in command.items()}).encode()
    return "/slack/commands", draw(st.one_of(st.just(body), st.just(body), RAW)), True


def test_slack_endpoints(fuzzed: Fuzzed) -> None:
    def request(
        http: httpx.Client, drawn: tuple[tuple[str, bytes, bool], int, str | None, dict[str, str]]
    ) -> tuple[httpx.Response, frozenset[int]]:
        (path, body, form), signing, content_type, extra = drawn
        if signing == 0:  # forged: another secret, or headers of any shape
            headers = {**signed(body, form=form, secret="not-the-signing-secret"), **extra}
            allowed = frozenset({401})
        elif signing == 1:  # a captured request replayed after the five-minute window
            headers = signed(body, form=form, timestamp=int(time.time()) - 301)
            allowed = frozenset({401})
        else:
            headers = signed(body, form=form)
            allowed = frozenset({200, 400, 404})
        if content_type is not None:
            headers["Content-Type"] = content_type
        return http.post(path, content=body, headers=headers), allowed

    signing = st.sampled_from((2, 2, 2, 2, 0, 1))
    forged_headers = st.fixed_dictionaries(
        {}, optional={"X-Slack-Signature": HEADER_VALUE, "X-Slack-Request-Timestamp": HEADER_VALUE}
    )
    content_type = st.one_of(st.none(), st.none(), CONTENT_TYPES)
    fuzz(fuzzed, st.tuples(slack_requests(), signing, content_type, forged_headers), request)


# --- WhatsApp -------------------------------------------------------------------------------------------------------


def test_whatsapp_webhook(fuzzed: Fuzzed) -> None:
    notifications = bodies(
        "whatsapp",
        ("text.json", "image.json", "button_reply.json", "status_delivered.json", "status_failed.json"),
    )
    query = st.dictionaries(
        st.sampled_from(("hub.mode", "hub.verify_token", "hub.challenge", "x")),
        st.one_of(TEXT, st.sampled_from(("subscribe", "verify-me-please"))),
        max_size=4,
    )

    def request(
        http: httpx.Client, drawn: tuple[bytes, int, dict[str, str], str, dict[str, str]]
    ) -> tuple[httpx.Response, frozenset[int]]:
        body, mode, params, forged, headers = drawn
        if mode == 0:
            params = {k: sendable(v) for k, v in params.items()}
            return http.get(whatsapp.WEBHOOK_PATH, params=params, headers=headers), frozenset({200, 403})
        signature = sign(body) if mode > 1 else forged
        answer = http.post(
            whatsapp.WEBHOOK_PATH,
            content=body,
            headers={**headers, "Content-Type": "application/json", "X-Hub-Signature-256": signature},
        )
        return answer, frozenset({200, 400}) if mode > 1 else frozenset({401})

    mode = st.sampled_from((2, 2, 2, 0, 1))
    fuzz(fuzzed, st.tuples(notifications, mode, query, HEADER_VALUE, EXTRA_HEADERS), request)


# --- WeChat ---------------------------------------------------------------------------------------------------------


XML_TEXT = st.one_of(st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=30), TEXT)


def _xml_fields(name: str) -> dict[str, str]:
    return {child.tag: child.text or "" for child in ElementTree.fromstring(payload("wechat", name))}


@st.composite
def wechat_pushes(draw: st.DrawFn) -> bytes:
    fields = dict(
        draw(
            st.sampled_from(
                [_xml_fields(n) for n in ("text.xml", "image.xml", "voice.xml", "event_subscribe.xml")]
            )
        )
    )
    for key in draw(st.lists(st.sampled_from(sorted(fields)), max_size=3)):
        if draw(st.booleans()):
            fields.pop(key, None)
        else:
            fields[key] = draw(XML_TEXT)
    fields.update(
        draw(
            st.dictionaries(
                st.one_of(st.sampled_from(("MsgId", "Event", "MediaId", "Format")), st.text(max_size=6)),
                XML_TEXT,
                max_size=2,
            )
        )
    )
    if draw(st.booleans()):
        fields["MsgId"] = str(
            draw(st.integers(min_value=0, max_value=2**63))
        )  # a new message, not a redelivery
    cdata = draw(st.booleans())
    inner = "".join(
        f"<{k}><![CDATA[{v}]]></{k}>" if cdata else f"<{k}>{_xml_escape(v)}</{k}>" for k, v in fields.items()
    )
    return f"<xml>{inner}</xml>".encode("utf-8", "surrogatepass")


def _xml_escape(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def test_wechat_webhook(fuzzed: Fuzzed) -> None:
    def request(
        http: httpx.Client, drawn: tuple[bytes, int, dict[str, str], dict[str, str]]
    ) -> tuple[httpx.Response, frozenset[int]]:
        body, mode, query, headers = drawn
        query = {k: sendable(v) for k, v in query.items()}
        if mode == 0:
            return http.get(
                wechat.WEBHOOK_PATH, params={**signed_query(), **query}, headers=headers
            ), frozenset({200, 403})
        if mode == 1:
            answer = http.post(
                wechat.WEBHOOK_PATH,
                params={**signed_query(), **query, "signature": "0" * 40},
                content=body,
                headers={**headers, "Content-Type": "text/xml"},
            )
            return answer, frozenset({401})
        answer = http.post(
            wechat.WEBHOOK_PATH,
            params={**query, **signed_query()},
            content=body,
            headers={**headers, "Content-Type": "text/xml"},
        )
        return answer, frozenset({200, 400})

    mode = st.sampled_from((2, 2, 2, 0, 1))
    query = st.dictionaries(st.sampled_from(("echostr", "openid", "encrypt_type", "x")), TEXT, max_size=2)
    fuzz(
        fuzzed,
        st.tuples(st.one_of(wechat_pushes(), wechat_pushes(), RAW), mode, query, EXTRA_HEADERS),
        request,
    )


# --- Teams ----------------------------------------------------------------------------------------------------------


def _loopback_only(node: Any, service_url: str) -> Any:
    """Every URL in the activity points at the fake connector: the bot fetches attachments and posts replies
    there, and a fuzzed activity must not send it anywhere but 127.0.0.1."""
    if isinstance(node, dict):
        return {k: _loopback_only(v, service_url) for k, v in node.items()}
    if isinstance(node, list):
        return [_loopback_only(v, service_url) for v in node]
    if isinstance(node, str) and "://" in node and not node.startswith(service_url):
        return service_url + "v3/attachments/fuzz/views/original"
    return node


def test_teams_messages(fuzzed: Fuzzed) -> None:
    stack = fuzzed.stack
    service_url = stack.teams_service_url
    samples = [
        json.loads(
            payload("teams", n).replace(b"https://smba.trafficmanager.net/emea/", service_url.encode())
        )
        for n in ("message_activity.json", "conversation_update.json")
    ]

    @st.composite
    def activities(draw: st.DrawFn) -> Any:
        document = draw(st.sampled_from(samples).flatmap(mutated))
        if isinstance(document, dict) and draw(st.booleans()):
            document["id"] = str(draw(st.integers(min_value=0, max_value=2**63)))
        return _loopback_only(document, service_url)

    def request(
        http: httpx.Client, drawn: tuple[Any, bool, int, str]
    ) -> tuple[httpx.Response, frozenset[int]]:
        document, ascii_only, mode, forged = drawn
        body = encode(document, ascii_only) if mode else forged.encode()
        if mode == 1:  # a token of any shape
            answer = http.post(
                teams.PATH,
                content=body,
                headers={"Authorization": f"Bearer {forged}".strip(), "Content-Type": "application/json"},
            )
            return answer, frozenset({401})
        token = stack.framework.issue(service_url=service_url)
        answer = http.post(
            teams.PATH,
            content=body if mode else forged.encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        return answer, frozenset({200, 400, 401})  # 401: a channelId the signing key is not endorsed for

    fuzz(
        fuzzed,
        st.tuples(activities(), st.booleans(), st.sampled_from((2, 2, 2, 2, 0, 1)), HEADER_VALUE),
        request,
    )


# --- everything else ------------------------------------------------------------------------------------------------


def test_any_method_on_any_path(fuzzed: Fuzzed) -> None:
    paths = st.one_of(
        st.sampled_from(
            (
                "/healthz",
                "/metrics",
                "/",
                "/desk",
                "/static/chat.js",
                "/static/../bot/app.py",
                "/telegram/webhook",
                "/slack/events",
                "/whatsapp/webhook",
                "/wechat/webhook",
                "/teams/messages",
                "/api/webchat/sessions",
                "/api/desk/cases",
            )
        ),
        st.text(max_size=20).map(lambda t: "/" + quote(t.encode("utf-8", "surrogatepass"))),
    )
    methods = st.sampled_from(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"))

    def request(
        http: httpx.Client, drawn: tuple[str, str, dict[str, str], bytes]
    ) -> tuple[httpx.Response, frozenset[int]]:
        method, path, headers, body = drawn
        answer = http.request(
            method, path, headers=headers, content=body if method in ("POST", "PUT", "PATCH") else None
        )
        if path in ("/healthz", "/metrics") and method == "GET":
            return answer, frozenset({200})
        return answer, frozenset({200, 201, 202, 304}) | CLIENT_ERRORS

    fuzz(fuzzed, st.tuples(methods, paths, EXTRA_HEADERS, RAW), request)


# --- what the fuzzing found, as plain requests -------------------------------------------------------------------


Call = tuple[str, str, dict[str, Any]]  # method, path, httpx arguments


def _telegram_changed(name: str, change: Callable[[dict[str, Any]], None]) -> Callable[[Fuzzed], Call]:
    def build(fuzzed: Fuzzed) -> Call:
        document = json_sample("telegram", name)
        document["update_id"] = 950000 + len(name)
        change(document)
        secret = fuzzed.stack.bot.settings.telegram_webhook_secret
        assert secret is not None
        return (
            "POST",
            telegram.WEBHOOK_PATH,
            {
                "content": json.dumps(document).encode(),
                "headers": {telegram.SECRET_HEADER: secret.get_secret_value()},
            },
        )

    return build


def _teams_changed(activity_id: str, **changes: Any) -> Callable[[Fuzzed], Call]:
    def build(fuzzed: Fuzzed) -> Call:
        service_url = fuzzed.stack.teams_service_url
        activity = json.loads(
            payload("teams", "message_activity.json").replace(
                b"https://smba.trafficmanager.net/emea/", service_url.encode()
            )
        )
        activity.update(id=activity_id, **changes)
        token = fuzzed.stack.framework.issue(service_url=service_url)
        return (
            "POST",
            teams.PATH,
            {
                "content": json.dumps(activity).encode(),
                "headers": {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            },
        )

    return build


def _slack_signed(path: str, body: bytes, **headers: str) -> Callable[[Fuzzed], Call]:
    return lambda fuzzed: ("POST", path, {"content": body, "headers": {**signed(body, form=True), **headers}})


def _whatsapp_from(sender: str) -> Callable[[Fuzzed], Call]:
    def build(fuzzed: Fuzzed) -> Call:
        document = json_sample("whatsapp", "text.json")
        value = document["entry"][0]["changes"][0]["value"]
        value["contacts"][0]["wa_id"] = value["messages"][0]["from"] = sender
        value["messages"][0]["id"] = "wamid.LONGSENDER"
        body = json.dumps(document).encode()
        return (
            "POST",
            whatsapp.WEBHOOK_PATH,
            {"content": body, "headers": {"X-Hub-Signature-256": sign(body)}},
        )

    return build


def _photo_width(document: dict[str, Any]) -> None:
    document["message"]["photo"][0]["width"] = [1]


def _first_name(document: dict[str, Any]) -> None:
    document["message"]["from"]["first_name"] = ["Mateo"]


def _file_name(document: dict[str, Any]) -> None:
    document["message"]["document"].update(file_name={"name": "x.exe"}, mime_type="application/x-msdownload")


def _no_sender(document: dict[str, Any]) -> None:
    document["callback_query"].update(message=None, **{"from": None})


def _view_without_user_id() -> bytes:
    view = json_sample("slack", "view_submission.json")
    view["user"] = {"name": "li.wei"}
    return as_form(json.dumps(view))


FOUND: dict[str, tuple[Callable[[Fuzzed], Call], frozenset[int]]] = {
    "telegram first name that is a list": (
        _telegram_changed("text_serial.json", _first_name),
        frozenset({200, 400}),
    ),
    "telegram photo width that is a list": (
        _telegram_changed("photo.json", _photo_width),
        frozenset({200, 400}),
    ),
    # A 503 asks Telegram to deliver the same broken update again, and again.
    "telegram file name that is an object": (
        _telegram_changed("document_invoice.json", _file_name),
        frozenset({200, 400}),
    ),
    "telegram button press without sender or message": (
        _telegram_changed("callback_query.json", _no_sender),
        frozenset({200, 400}),
    ),
    "web chat 'after' in superscript digits": (
        lambda f: ("GET", f"/api/webchat/sessions/{f.session}/messages", {"params": {"after": "²"}}),
        frozenset({200, 422}),
    ),
    "web chat 'after' beyond 32 bits": (
        lambda f: ("GET", f"/api/webchat/sessions/{f.session}/messages", {"params": {"after": "8372160574"}}),
        frozenset({200, 422}),
    ),
    "desk attachment id beyond 32 bits": (
        lambda f: ("GET", f"/api/desk/cases/{f.case_ref}/attachments/999999999999", {"headers": DESK_AUTH}),
        frozenset({404}),
    ),
    "teams sender name that is an object": (
        _teams_changed("found-1", **{"from": {"id": "29:x", "name": {"a": 1}}}),
        frozenset({200, 400}),
    ),
    "teams channelId that is an object": (_teams_changed("found-2", channelId={}), frozenset({400, 401})),
    "teams entities that are a number": (_teams_changed("found-3", entities=5), frozenset({200, 400})),
    "teams attachments that are a number": (_teams_changed("found-4", attachments=5), frozenset({200, 400})),
    "teams mention whose 'mentioned' is text": (
        _teams_changed("found-5", entities=[{"type": "mention", "text": "Bonjour", "mentioned": "bot"}]),
        frozenset({200, 400}),
    ),
    "teams conversation id of 300 characters": (
        _teams_changed("found-6", conversation={"id": "a:" + "x" * 300}),
        frozenset({200, 400}),
    ),
    # A 503 makes WhatsApp redeliver a notification that can never be stored.
    "whatsapp sender id of 300 digits": (_whatsapp_from("4" * 300), frozenset({200, 400})),
    "slack command sent as JSON": (
        _slack_signed(
            "/slack/commands", payload("slack", "slash_command.txt"), **{"Content-Type": "application/json"}
        ),
        frozenset({200, 400}),
    ),
    "slack modal submission without a user id": (
        _slack_signed("/slack/interactivity", _view_without_user_id()),
        frozenset({200, 400}),
    ),
}


@pytest.mark.parametrize("name", sorted(FOUND))
def test_what_the_fuzzing_found(fuzzed: Fuzzed, name: str) -> None:
    build, allowed = FOUND[name]
    with fuzzed.stack.client() as http:
        method, path, arguments = build(fuzzed)
        answer = http.request(method, path, **arguments)
        assert http.get("/healthz").status_code == 200
    assert answer.status_code in allowed, answer.text


def test_text_with_a_lone_surrogate_is_answered_not_failed(fuzzed: Fuzzed) -> None:
    """JSON may carry "\\ud800"; such text must be stored and answered like any other, not crash the turn."""
    stack = fuzzed.stack
    with stack.client() as http:
        session = http.post("/api/webchat/sessions", json={"language": "en"}).json()["session_id"]
        answer = http.post(
            f"/api/webchat/sessions/{session}/messages",
            content=b'{"text": "hello \\ud800 there"}',
            headers={"Content-Type": "application/json"},
        )
        assert answer.status_code == 202
        stack.settle()
    (item,) = [i for i in stack.inbox() if i.chat_id == session]
    assert (item.status, item.error) == ("done", None)


# --- afterwards -----------------------------------------------------------------------------------------------------


def test_after_the_fuzzing_everything_still_works_and_the_database_is_consistent(fuzzed: Fuzzed) -> None:
    stack = fuzzed.stack
    with stack.client() as http:
        assert http.get("/healthz").status_code == 200
        metrics = http.get("/metrics")
        assert metrics.status_code == 200 and "warranty_inbox_messages" in metrics.text

        # The inbox worker and the deliverer are alive: a new web chat customer is answered end to end.
        session = http.post("/api/webchat/sessions", json={"language": "en"}).json()["session_id"]
        assert (
            http.post(f"/api/webchat/sessions/{session}/messages", json={"text": "hello"}).status_code == 202
        )

        def answered() -> list[dict[str, Any]]:
            messages = http.get(f"/api/webchat/sessions/{session}/messages").json()["messages"]
            return [m for m in messages if m["author"] == "bot"]

        assert wait_until(answered, what="the bot's answer after the fuzzing")[0]["text"]
        wait_until(
            lambda: any(o.chat_id == session and o.status == "sent" for o in stack.outbox()),
            what="the answer delivered by the outbox",
        )

    stack.settle()
    assert [i for i in stack.inbox() if i.status == "pending"] == []
    assert consistency_problems(stack.db) == []
    failed = [(i.channel, i.external_id, i.error) for i in stack.inbox() if i.status == "failed"]
    assert failed == [], failed  # nothing that passed a channel's checks may crash the conversation


def test_the_consistency_check_can_fail(tmp_path: Path) -> None:
    bot = build(
        Settings(
            _env_file=None,
            database_url=f"sqlite:///{tmp_path}/w.db",
            data_dir=tmp_path,  # type: ignore[call-arg]
            attachments_dir=tmp_path / "a",
        )
    )
    with session_scope(bot.db) as session:
        session.add(
            InboxItem(
                channel="webchat",
                external_id="x",
                chat_id="c",
                payload={},
                status="lost",
                received_at=utcnow(),
            )
        )
    assert consistency_problems(bot.db) == ["inbox 1 in status 'lost'"]
    bot.db.dispose()
