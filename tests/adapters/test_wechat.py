"""WeChat channel: signatures, safe-mode crypto and XML safety, then the bot's real server against a loopback fake."""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from pydantic import SecretStr
from sqlalchemy import Engine, select
from sqlmodel import Session

from adapters import webchat, wechat
from adapters.wechat import (
    Crypto,
    DecryptError,
    MalformedPayload,
    delivery_error,
    parse_push,
    parse_xml,
    render,
    signature_valid,
    timestamp_fresh,
)
from bot.app import Bot
from bot.channels import split_text
from bot.config import Settings
from bot.messages import Button
from bot.outbox import PermanentFailure, RetryLater, Unreachable
from bot.store import KeyValue, StoredAttachment, session_scope
from tests.fakes.server import serve
from tests.fakes.wechat import (
    APP_ID,
    APP_SECRET,
    OPENID,
    PAYLOADS,
    TOKEN,
    FakeWeChat,
    signed_query,
)
from tests.support import RunningChannel, channel_served, health_elsewhere, wait_until

AES_KEY = base64.b64encode(bytes(range(7, 39))).decode().rstrip("=")  # 43 characters, as WeChat shows it
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 3
AMR = b"#!AMR\n" + bytes(200)
BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<xml><ToUserName>gh_5c1e8a9f3b27</ToUserName><FromUserName>oX3kT5wQ9pL2mN8vR6yB1cJ4dF7g</FromUserName>
<CreateTime>1777874502</CreateTime><MsgType>text</MsgType><Content>&lol9;</Content><MsgId>1</MsgId></xml>"""
EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE xml [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<xml><FromUserName>o1</FromUserName><CreateTime>1</CreateTime><MsgType>text</MsgType><Content>&secret;</Content>
<MsgId>2</MsgId></xml>"""


def payload(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


def text_push(content: str, msg_id: int) -> bytes:
    """A later text message of the same customer, derived from the sample."""
    sample = payload("text.xml")
    body = re.sub(
        rb"<Content><!\[CDATA\[.*?\]\]></Content>",
        b"<Content><![CDATA[" + content.encode() + b"]]></Content>",
        sample,
        flags=re.S,
    )
    return body.replace(b"24593860172834561", str(msg_id).encode())


def encrypt(xml: bytes, *, app_id: str = APP_ID, key: str = AES_KEY) -> str:
    """Safe mode as the README describes it: AES-256-CBC, IV = key[:16], PKCS#7 to 32-byte blocks."""
    raw_key = base64.b64decode(key + "=")
    plain = os.urandom(16) + len(xml).to_bytes(4, "big") + xml + app_id.encode()
    pad = 32 - len(plain) % 32
    plain += bytes([pad]) * pad
    encryptor = Cipher(algorithms.AES(raw_key), modes.CBC(raw_key[:16])).encryptor()
    return base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode()


def envelope(encrypted: str) -> bytes:
    return payload("encrypted_envelope.xml").replace(b"PLACEHOLDER_BASE64_AES_CIPHERTEXT", encrypted.encode())


# --- verify, decrypt, parse -----------------------------------------------------------------------------------------


def test_signature_over_token_timestamp_and_nonce() -> None:
    query = signed_query()
    assert signature_valid(TOKEN, query)
    assert not signature_valid(TOKEN, signed_query(token="guessed"))
    assert not signature_valid(TOKEN, {**query, "nonce": query["nonce"] + "x"})
    assert not signature_valid(TOKEN, {k: v for k, v in query.items() if k != "signature"})
    assert not signature_valid("", query)


def test_only_a_timestamp_near_now_is_fresh() -> None:
    now = datetime(2026, 5, 6, 8, 0, 2, tzinfo=UTC)
    assert timestamp_fresh({"timestamp": "1778054402"}, now)
    assert timestamp_fresh({"timestamp": "1778054402"}, now + timedelta(minutes=4))
    assert not timestamp_fresh({"timestamp": "1778054402"}, now + timedelta(minutes=6))
    # Missing, not digits, too long, or past the year 9999: not fresh (and no error).
    for timestamp in ("", "17780544o2", "１７７８０５４４０２", "1778054402000", "999999999999"):
        assert not timestamp_fresh({"timestamp": timestamp}, now)
    assert not timestamp_fresh({}, now)


def test_safe_mode_round_trip() -> None:
    crypto = Crypto(AES_KEY, APP_ID)
    for name in ("text.xml", "image.xml", "voice.xml", "event_subscribe.xml"):
        assert crypto.decrypt(encrypt(payload(name))) == payload(name)
    query = signed_query(encrypted=(ciphertext := encrypt(payload("text.xml"))))
    assert wechat.msg_signature_valid(TOKEN, query, ciphertext)
    assert not wechat.msg_signature_valid(TOKEN, query, encrypt(payload("text.xml")))  # other ciphertext


@pytest.mark.parametrize(
    "ciphertext",
    [
        encrypt(payload("text.xml"), app_id="wxSomeOtherAccount"),
        encrypt(payload("text.xml"), key=base64.b64encode(bytes(32)).decode().rstrip("=")),
        "bm90IGJsb2Nrcw==",
        "not base64 at all!",
        "",
    ],
)
def test_ciphertext_for_another_account_or_damaged_is_refused(ciphertext: str) -> None:
    with pytest.raises(DecryptError):
        Crypto(AES_KEY, APP_ID).decrypt(ciphertext)


def test_a_bad_aes_key_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="43"):
        Crypto("tooshort", APP_ID)


def test_parse_the_samples() -> None:
    text = parse_push(parse_xml(payload("text.xml")))
    assert (text.openid, text.msg_type, text.external_id) == (OPENID, "text", "24593860172834561")
    assert "CSP2405C1190" in text.content and text.content.startswith("你好")
    image = parse_push(parse_xml(payload("image.xml")))
    assert image.media_id.startswith("uDgDSGaz") and image.external_id == "24593861048217733"
    voice = parse_push(parse_xml(payload("voice.xml")))
    assert (voice.msg_type, voice.format) == ("voice", "amr")
    event = parse_push(parse_xml(payload("event_subscribe.xml")))
    assert (event.event, event.external_id) == ("subscribe", f"event:{OPENID}:1777874410")


@pytest.mark.parametrize(
    "body",
    [
        BILLION_LAUGHS,
        EXTERNAL_ENTITY,
        b"",
        b"<xml><unclosed></xml>",
        b"<html></html>",
        b"\xff\xfe<xml/>",
        b"<xml><Content>" + b"x" * (wechat.MAX_BODY_BYTES + 1) + b"</Content></xml>",
    ],
)
def test_unsafe_or_broken_xml_is_refused(body: bytes) -> None:
    with pytest.raises(MalformedPayload):
        parse_xml(body)


def test_a_push_without_its_fields_is_refused() -> None:
    with pytest.raises(MalformedPayload):
        parse_push({"FromUserName": OPENID, "MsgType": "text", "CreateTime": "1777874502"})  # no MsgId
    with pytest.raises(MalformedPayload):
        parse_push({"MsgType": "event", "CreateTime": "1"})


def test_long_text_is_cut_by_utf8_bytes() -> None:
    text = "逆变器显示故障E07，一接负载就关机。" * 200
    pieces = split_text(text, wechat.TEXT_LIMIT_BYTES, unit="bytes")
    assert len(pieces) > 1 and all(len(p.encode()) <= wechat.TEXT_LIMIT_BYTES for p in pieces)
    assert "".join(pieces) == text


def test_buttons_become_numbered_options() -> None:
    shown = render(
        "How did the fault appear?",
        (Button(label="Normal use", value="cause:normal"), Button(label="Dropped", value="cause:damage")),
    )
    assert shown == "How did the fault appear?\n\n1. Normal use\n2. Dropped"


def test_api_errors_map_to_outbox_outcomes() -> None:
    assert isinstance(delivery_error(wechat.WeChatError(-1, "system busy")), RetryLater)
    assert isinstance(delivery_error(wechat.WeChatError(45009, "api freq out of limit")), RetryLater)
    assert isinstance(delivery_error(wechat.WeChatError(43004, "require subscribe")), Unreachable)
    assert isinstance(delivery_error(wechat.WeChatError(40003, "invalid openid")), PermanentFailure)
    assert not isinstance(delivery_error(wechat.WeChatError(40003, "x")), RetryLater)


# --- the bot's server against the fake WeChat API --------------------------------------------------------------------


@dataclass
class Running(RunningChannel):
    api: FakeWeChat
    safe_mode: bool = False

    def push(
        self, body: bytes, *, query: dict[str, str] | None = None, interaction: str | None = "message"
    ) -> httpx.Response:
        """POST a push as WeChat would; the fake API grants the quota that the customer's action gives."""
        if interaction:
            self.api.interaction(OPENID, interaction)
        if query is None:
            if self.safe_mode:
                encrypted = encrypt(body)
                body, query = envelope(encrypted), signed_query(encrypted=encrypted)
            else:
                query = signed_query()
        return httpx.post(
            f"{self.url}{wechat.WEBHOOK_PATH}",
            params=query,
            content=body,
            headers={"content-type": "text/xml"},
            timeout=10,
        )

    def sent(self) -> list[str]:
        return self.api.texts(OPENID)

    def texts(self) -> list[str]:
        return self.sent()

    def trouble(self) -> str:
        return f"{super().trouble()}; fake {self.api.refused}"


def _wechat_settings(api_url: str, *, safe_mode: bool) -> dict[str, Any]:
    """The settings of the bot's WeChat account on the fake API at `api_url`."""
    return {
        "wechat_app_id": APP_ID,
        "wechat_app_secret": SecretStr(APP_SECRET),
        "wechat_token": SecretStr(TOKEN),
        "wechat_encoding_aes_key": SecretStr(AES_KEY) if safe_mode else None,
        "wechat_api_base_url": api_url,
        "outbox_poll_seconds": 0.1,
    }


def _start(settings: Settings, db: Engine, *, safe_mode: bool) -> Iterator[Running]:
    api = FakeWeChat(app_id=APP_ID, app_secret=APP_SECRET)
    with serve(api.app()) as api_url:
        update = _wechat_settings(api_url, safe_mode=safe_mode)
        with channel_served(settings, db, update, wechat.from_settings) as (bot, url):
            yield Running(bot=bot, api=api, url=url, safe_mode=safe_mode)


@pytest.fixture
def running(settings: Settings, db: Engine) -> Iterator[Running]:
    yield from _start(settings, db, safe_mode=False)


@pytest.fixture
def running_safe(settings: Settings, db: Engine) -> Iterator[Running]:
    yield from _start(settings, db, safe_mode=True)


def _choose(texts: list[str]) -> str:
    """The number of the option a customer who wants an engineer would pick in the bot's last message."""
    options: dict[str, str] = dict(re.findall(r"^(\d+)\. (.+)$", texts[-1], flags=re.M))
    for wanted in ("It failed in normal use", "Repair", "Talk to an engineer"):
        for number, label in options.items():
            if label.strip() == wanted:
                return number
    raise AssertionError(f"no known option in {texts[-1]!r}")


def test_a_full_claim_over_wechat(running: Running) -> None:
    api = running.api
    api.media["uDgDSGaz73ZmaApVemyeBoFPs25tKqwg-L4V0YoVsB78jLaTa8zp0LCB681tUXsN"] = (JPEG, "image/jpeg")

    # Following the account greets the customer (the event's 3-messages-a-minute quota).
    answer = running.push(payload("event_subscribe.xml"), interaction="event")
    assert (answer.status_code, answer.text) == (200, "success")
    greeting = running.settled(1, "the greeting")
    assert len(greeting) == 1  # greeting and question in one message: each one counts against a quota
    assert running.push(payload("event_subscribe.xml"), interaction=None).text == "success"  # redelivered

    assert running.push(payload("text.xml")).text == "success"
    texts = running.settled(len(greeting) + 1, "the answer to the serial")
    assert any("CSP2405C1190" in t for t in texts)
    assert running.push(payload("text.xml"), interaction=None).text == "success"  # redelivered
    assert [i.external_id for i in running.inbox()] == [f"event:{OPENID}:1777874410", "24593860172834561"]

    before = len(texts)
    assert running.push(payload("image.xml")).text == "success"
    texts = running.settled(before + 1, "the answer to the photo")
    stored = running.stored_attachment()
    assert (stored.kind, stored.mime, stored.size) == ("photo", "image/jpeg", len(JPEG))

    def press(number: int) -> str:  # the number of an option, written
        choice = _choose(running.texts())
        assert running.push(text_push(choice, 24593870000000000 + number)).text == "success"
        return choice

    running.press_until_a_case(press, range(1, 6))
    ref = wait_until(running.case_ref, what="a case")
    wait_until(lambda: any(ref in t for t in api.texts(OPENID)), what="the case reference")

    running.bot.desk.claim(ref, engineer="Li Wei")
    running.bot.desk.reply(ref, engineer="Li Wei", text="请发送铭牌照片。")
    wait_until(lambda: any("铭牌照片" in t for t in api.texts(OPENID)), what="the engineer's reply")
    assert any("Li Wei" in t and ref in t for t in api.texts(OPENID))
    assert any("请发送铭牌照片".encode() in raw for raw in api.raw_bodies)  # UTF-8, not \\u escapes

    assert api.refused == []  # never over the quota, never a stale token
    assert len(api.token_requests) == 1  # one token, cached in the database for every worker


def test_a_voice_message_is_kept_as_an_attachment(running: Running) -> None:
    running.api.media["SeeODN8IQYm4Cft9sZRZyo5BJ6_yMUoZoiJnol16aX6KrEES7657Rdq8ne68Rsf8"] = (AMR, "audio/amr")
    assert running.push(payload("voice.xml")).text == "success"

    def stored_files() -> list[StoredAttachment]:
        with Session(running.bot.db) as session:
            return list(session.execute(select(StoredAttachment)).scalars())

    (stored,) = wait_until(stored_files, what="the voice note stored")
    assert (stored.kind, stored.mime, stored.size, stored.name) == (
        "voice",
        "audio/amr",
        len(AMR),
        "voice-24593861857930245.amr",
    )


def _case(running: Running) -> str:
    assert running.push(payload("text.xml")).text == "success"
    running.settled(1, "the first answer")
    assert running.push(text_push("人工", 24593880000000001)).text == "success"
    ref = wait_until(running.case_ref, what="a case")
    wait_until(lambda: any(ref in t for t in running.api.texts(OPENID)), what="the case reference")
    return ref


def test_five_messages_per_customer_message_and_the_rest_waits(running: Running) -> None:
    api = running.api
    ref = _case(running)
    before = running.settled(1, "the bot's answers")
    left = api.quota[OPENID]  # what WeChat still allows after the bot answered the customer's last message
    assert 2 <= left < 5
    for n in range(1, 7):
        running.bot.desk.reply(ref, engineer="Li Wei", text=f"问题 {n}：请检查接线。")

    # What the quota allows goes out; its last message tells the customer that more is waiting.
    sent = wait_until(
        lambda: len(api.texts(OPENID)) == len(before) + left and api.texts(OPENID),
        what="the quota's messages",
    )
    notice = running.bot.renderer.text("messages_waiting", language="zh")
    assert sent[-1] == notice  # the customer wrote in Chinese
    held = wait_until(lambda: [i for i in running.outbox() if i.status == "held"], what="a held row")
    assert len(held) == 1 and api.refused == []
    waiting = [i for i in running.outbox() if i.status in ("held", "pending")]
    assert [_question(i.payload["text"]) for i in waiting] == list(range(left, 7))

    # The customer answers: the rest follows, in order, within the new quota.
    assert running.push(text_push("好的", 24593880000000002)).text == "success"
    wait_until(lambda: any("问题 6" in t for t in api.texts(OPENID)), what="the last reply")
    engineer = [t for t in api.texts(OPENID) if "请检查接线" in t]
    assert [_question(t) for t in engineer] == [1, 2, 3, 4, 5, 6]
    assert api.texts(OPENID).count(notice) == 1 and api.refused == []


def _question(text: str) -> int:
    found = re.search(r"问题 (\d)", text)
    assert found is not None, text
    return int(found.group(1))


def _age_window(db: Engine, hours: int) -> None:
    with session_scope(db) as session:
        row = session.get(KeyValue, f"wechat:window:{OPENID}")
        assert row is not None
        since = datetime.fromisoformat(row.value["since"]) - timedelta(hours=hours)
        row.value = {**row.value, "since": since.isoformat()}


def test_outside_48_hours_replies_wait_for_the_customer_and_a_stale_token_is_replaced(
    running: Running,
) -> None:
    api = running.api
    ref = _case(running)
    wait_until(lambda: all(i.status == "sent" for i in running.outbox()), what="everything sent")
    _age_window(running.bot.db, hours=49)
    api.window_closed(OPENID)
    count = len(api.texts(OPENID))

    running.bot.desk.reply(ref, engineer="Li Wei", text="请问设备现在还报E07吗？")
    wait_until(lambda: [i for i in running.outbox() if i.status == "held"], what="held")
    assert len(api.texts(OPENID)) == count  # nothing, not even a notice: there is no quota to tell them with

    api.invalidate_token()  # meanwhile the token stopped working
    assert running.push(text_push("在吗？", 24593880000000003)).text == "success"
    wait_until(lambda: any("还报E07" in t for t in api.texts(OPENID)), what="the held reply")
    assert api.refused == [40001]  # refused once, then refreshed and sent again
    # A normal refresh got the new token: force_refresh (20 a day, voiding every worker's token) was not used.
    assert api.token_requests[-1]["force_refresh"] is False and api.forced == 0
    with Session(running.bot.db) as session:
        cached = session.get(KeyValue, f"wechat:access_token:{APP_ID}")
        assert cached is not None and cached.value["access_token"] == api.token


def test_safe_mode_end_to_end(running_safe: Running) -> None:
    api = running_safe.api
    answer = running_safe.push(payload("text.xml"))
    assert (answer.status_code, answer.text) == (200, "success")
    wait_until(lambda: any("CSP2405C1190" in t for t in api.texts(OPENID)), what="the answer")
    assert [i.external_id for i in running_safe.inbox()] == ["24593860172834561"]

    # In safe mode a plain body is refused, and so is a msg_signature that does not cover the ciphertext.
    assert running_safe.push(payload("image.xml"), query=signed_query()).status_code == 401
    encrypted = encrypt(payload("image.xml"))
    assert (
        running_safe.push(envelope(encrypted), query=signed_query(encrypted=encrypt(b"<xml/>"))).status_code
        == 401
    )
    # Decrypting to something unsafe or for another account is a bad request.
    for inner in (encrypt(BILLION_LAUGHS), encrypt(payload("image.xml"), app_id="wxOther")):
        assert running_safe.push(envelope(inner), query=signed_query(encrypted=inner)).status_code == 400
    assert len(running_safe.inbox()) == 1


def test_forged_malformed_and_verification_requests(running: Running) -> None:
    body = payload("text.xml")
    assert running.push(body, query=signed_query(token="guessed")).status_code == 401
    assert running.push(body, query={}).status_code == 401
    assert running.push(BILLION_LAUGHS).status_code == 400
    assert running.push(EXTERNAL_ENTITY).status_code == 400
    assert running.push(b"<xml><MsgType>text</MsgType></xml>").status_code == 400
    assert running.push(b"\x00garbage").status_code == 400
    assert running.inbox() == [] and running.api.sent == []

    url = f"{running.url}{wechat.WEBHOOK_PATH}"
    answer = httpx.get(url, params={**signed_query(), "echostr": "7301924411"})
    assert (answer.status_code, answer.text) == (200, "7301924411")
    assert httpx.get(url, params={**signed_query(token="guessed"), "echostr": "1"}).status_code == 403


def test_not_configured_without_credentials(bot: Bot) -> None:
    assert wechat.from_settings(bot) is None


def test_plaintext_mode_refuses_an_old_signed_query_and_a_nonce_with_another_body(running: Running) -> None:
    # The plaintext signature covers only the token, timestamp and nonce: a captured query (even the GET
    # verification URL) could POST any body as any openid, 30 days later.
    month_old = signed_query(age=30 * 24 * 3600)
    assert running.push(payload("text.xml"), query=month_old).status_code == 401
    assert (
        running.push(payload("text.xml"), query=signed_query(age=-3600)).status_code == 401
    )  # from the future
    verification = signed_query()
    assert (
        httpx.get(f"{running.url}{wechat.WEBHOOK_PATH}", params={**verification, "echostr": "5"}).text == "5"
    )
    query = signed_query()
    assert running.push(payload("text.xml"), query=query).text == "success"
    assert running.push(payload("text.xml"), query=query).text == "success"  # WeChat's retry: same bytes
    forged = text_push("I am someone else", 24593860172834999).replace(
        OPENID.encode(), b"oVictim0000000000000000000000"
    )
    assert running.push(forged, query=query).status_code == 401
    assert [i.external_id for i in running.inbox()] == ["24593860172834561"]


def test_known_answer_vectors_from_wechatpy() -> None:
    # Vectors computed by another implementation, so that a mistake shared by our helper and our tests cannot pass.
    vectors = json.loads(payload("known_answer_vectors.json"))
    crypto = wechat.Crypto(vectors["encoding_aes_key"], vectors["app_id"])
    token = vectors["token"]

    echo = vectors["echo"]
    query = {"msg_signature": echo["msg_signature"], "timestamp": echo["timestamp"], "nonce": echo["nonce"]}
    assert wechat.msg_signature_valid(token, query, echo["echostr"])
    assert not wechat.msg_signature_valid(token, {**query, "nonce": echo["wrong_nonce"]}, echo["echostr"])
    assert crypto.decrypt(echo["echostr"])  # the echo string decrypts for this id

    case = vectors["decrypt"]
    encrypted = wechat.parse_xml(case["body"].encode())["Encrypt"]
    query = {"msg_signature": case["msg_signature"], "timestamp": case["timestamp"], "nonce": case["nonce"]}
    assert wechat.msg_signature_valid(token, query, encrypted)
    fields = wechat.parse_xml(crypto.decrypt(encrypted))
    assert (fields["Content"], fields["FromUserName"]) == (case["content"], case["from_user_name"])

    sealed = vectors["encrypt"]
    assert crypto.decrypt(sealed["encrypt"]).decode() == sealed["plaintext"]
    assert (
        wechat.sha1_signature(token, sealed["timestamp"], sealed["nonce"], sealed["encrypt"])
        == sealed["msg_signature"]
    )
    # Our tests' own encryption helper gives wechatpy's bytes for the same random prefix.
    raw_key = base64.b64decode(vectors["encoding_aes_key"] + "=")
    xml = sealed["plaintext"].encode()
    plain = sealed["random"].encode() + len(xml).to_bytes(4, "big") + xml + vectors["app_id"].encode()
    plain += bytes([32 - len(plain) % 32]) * (32 - len(plain) % 32)
    encryptor = Cipher(algorithms.AES(raw_key), modes.CBC(raw_key[:16])).encryptor()
    assert base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode() == sealed["encrypt"]
    with pytest.raises(wechat.DecryptError):
        wechat.Crypto(vectors["encoding_aes_key"], "wxSomeoneElse").decrypt(sealed["encrypt"])


def test_a_refused_token_the_endpoint_still_hands_out_is_forced_once(running: Running) -> None:
    _case(running)
    wait_until(lambda: all(i.status == "sent" for i in running.outbox()), what="everything sent")
    running.api.revoke_token()
    count = len(running.api.texts(OPENID))
    assert running.push(text_push("还在吗", 24593880000000011)).text == "success"
    wait_until(lambda: len(running.api.texts(OPENID)) > count, what="a reply with a forced token")
    assert [r["force_refresh"] for r in running.api.token_requests[-2:]] == [
        False,
        True,
    ] and running.api.forced == 1


def test_a_refused_set_up_holds_replies_reports_it_and_releases_them_when_fixed(running: Running) -> None:
    api = running.api
    api.whitelisted = False  # the server moved to an IP the account does not list
    assert running.push(payload("text.xml")).text == "success"
    held = wait_until(lambda: [i for i in running.outbox() if i.status == "held"], what="held replies")
    assert all(i.last_error and "40164" in i.last_error for i in held)
    assert not [i for i in running.outbox() if i.status == "dead"]
    health = httpx.get(f"{running.url}/healthz").json()
    assert health["status"] == "degraded" and "40164" in health["problems"]["wechat"]
    # A front whose channel never sent (the sender ran in another process) reads the same from the database;
    # one that does not serve WeChat has no WeChat problem.
    elsewhere = health_elsewhere(running.bot.settings, wechat.from_settings)
    assert elsewhere["status"] == "degraded" and elsewhere["problems"] == health["problems"]
    assert "problems" not in health_elsewhere(running.bot.settings, webchat.from_settings)

    api.whitelisted = True  # an administrator added the IP; the customer writes again
    assert running.push(text_push("CSP2405C1190", 24593880000000012)).text == "success"
    wait_until(lambda: all(i.status == "sent" for i in running.outbox()), what="every held reply sent")
    assert httpx.get(f"{running.url}/healthz").json()["status"] == "ok"
    assert "problems" not in health_elsewhere(running.bot.settings, wechat.from_settings)


def test_a_restart_releases_the_replies_a_refused_set_up_held_and_clears_its_problem(
    settings: Settings, db: Engine
) -> None:
    api = FakeWeChat(app_id=APP_ID, app_secret=APP_SECRET, whitelisted=False)
    with serve(api.app()) as api_url:
        update = _wechat_settings(api_url, safe_mode=False)
        with channel_served(settings, db, update, wechat.from_settings) as (bot, url):
            running = Running(bot=bot, api=api, url=url)
            assert running.push(payload("text.xml")).text == "success"
            wait_until(lambda: [i for i in running.outbox() if i.status == "held"], what="held replies")
            assert "40164" in httpx.get(f"{url}/healthz").json()["problems"]["wechat"]

        # The IP is whitelisted while the server is down. The restarted server shows the problem no more (its
        # sender, which never met it, would not clear it), and the held replies go out.
        api.whitelisted = True
        with channel_served(settings, db, update, wechat.from_settings) as (bot, url):
            assert "problems" not in httpx.get(f"{url}/healthz").json()
            restarted = Running(bot=bot, api=api, url=url)
            wait_until(
                lambda: all(i.status == "sent" for i in restarted.outbox()), what="every held reply sent"
            )


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        ("voice_recognition.xml", "E07"),
        ("event_click.xml", None),
        ("location.xml", "深圳"),
        ("video.xml", None),
    ],
)
def test_recognised_voice_menu_clicks_locations_and_videos_are_answered(
    running: Running, sample: str, expected: str | None
) -> None:
    interaction = "event" if "event" in sample else "message"
    assert running.push(payload(sample), interaction=interaction).text == "success"
    [item] = wait_until(running.inbox, what="the push stored")
    assert expected is None or expected in item.payload["text"]
    wait_until(lambda: running.api.texts(OPENID), what="an answer")
