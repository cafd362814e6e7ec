"""A minimal IMAP4rev1 server on loopback: one mailbox, the commands the email adapter uses, and a log of them.

Supported: CAPABILITY, NOOP, LOGIN, AUTHENTICATE XOAUTH2 (the SASL string checked against a token endpoint fake;
LOGIN refused with LOGINDISABLED when the mailbox takes OAuth only, as Microsoft 365 does), SELECT (EXISTS, UIDVALIDITY, UIDNEXT), UID SEARCH (ALL, UNSEEN, UID set),
UID FETCH (UID, FLAGS, RFC822.SIZE, BODY[], BODY.PEEK[] and partial BODY.PEEK[]<o.n>), UID STORE (+FLAGS with
\\Seen), IDLE/DONE (announces new mail with EXISTS) and LOGOUT. Everything else is answered with BAD.
"""

from __future__ import annotations

import re
import select
import socketserver
import threading
from base64 import b64decode, b64encode
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

_TOKEN = re.compile(rb'"((?:[^"\\]|\\.)*)"|(\((?:[^()]|\([^()]*\))*\))|(\S+)')
_PARTIAL = re.compile(rb"BODY(\.PEEK)?\[\](?:<(\d+)\.(\d+)>)?", re.IGNORECASE)


@dataclass
class Mail:
    uid: int
    raw: bytes
    flags: set[str] = field(default_factory=set)


@dataclass
class Mailbox:
    """The one mailbox; `fetched` records (session number, uid) of every body fetch, for assertions."""

    user: str
    password: str
    name: str = "INBOX"
    uidvalidity: int = 1_777_000_001
    idle: bool = True
    mails: list[Mail] = field(default_factory=list)
    next_uid: int = 1
    fetched: list[tuple[int, int]] = field(default_factory=list)
    commands: list[tuple[int, str]] = field(default_factory=list)
    sessions: int = 0
    fail_fetch: set[int] = field(default_factory=set)  # UIDs whose body fetch fails (a server hiccup)
    # (user, token) -> valid: when set, the mailbox takes OAuth only (LOGIN refused, AUTH=XOAUTH2 offered)
    oauth: Callable[[str, str], bool] | None = None
    authentications: list[str] = field(default_factory=list)  # "ok" or "refused", per AUTHENTICATE
    changed: threading.Condition = field(default_factory=threading.Condition)

    def append(self, raw: bytes, *, seen: bool = False) -> int:
        with self.changed:
            uid = self.next_uid
            self.next_uid += 1
            self.mails.append(Mail(uid=uid, raw=raw, flags={"\\Seen"} if seen else set()))
            self.changed.notify_all()
            return uid

    def rebuild(self, uidvalidity: int) -> None:
        """What a server does when it rebuilds the mailbox: new UIDVALIDITY, UIDs numbered afresh."""
        with self.changed:
            self.uidvalidity = uidvalidity
            for number, mail in enumerate(self.mails, start=1):
                mail.uid = number
            self.next_uid = len(self.mails) + 1

    def fetched_uids(self, session: int | None = None) -> list[int]:
        return [uid for number, uid in self.fetched if session is None or number == session]


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def setup(self) -> None:
        self.buffer = b""
        self.selected = False
        self.authenticated = False
        self.reported = 0  # the message count this session was last told (EXISTS)
        box = self.server.mailbox
        with box.changed:
            box.sessions += 1
            self.number = box.sessions

    def handle(self) -> None:
        box = self.server.mailbox
        self._send(f"* OK [CAPABILITY {self._capabilities()}] fake IMAP ready")
        while not self.server.closing.is_set():
            line = self._readline(timeout=None)
            if line is None:
                return
            parts = line.split(b" ", 2)
            if len(parts) < 2:
                self._send("* BAD no tag")
                continue
            tag, command = parts[0].decode(), parts[1].upper().decode()
            args = parts[2] if len(parts) > 2 else b""
            with box.changed:
                box.commands.append((self.number, f"{command} {args.decode(errors='replace')}".strip()))
            if command == "LOGOUT":
                self._send("* BYE logging out")
                self._send(f"{tag} OK LOGOUT completed")
                return
            handler = getattr(self, f"_cmd_{command.lower()}", None)
            if handler is None:
                self._send(f"{tag} BAD unknown command {command}")
                continue
            handler(tag, args)

    def _report_exists(self) -> None:
        """Tell the client about new mail, as real servers do with any response while a mailbox is selected."""
        with self.server.mailbox.changed:
            count = len(self.server.mailbox.mails)
        if self.selected and count != self.reported:
            self.reported = count
            self._send(f"* {count} EXISTS")

    # --- commands -------------------------------------------------------------------------------------

    def _cmd_capability(self, tag: str, args: bytes) -> None:
        self._send(f"* CAPABILITY {self._capabilities()}")
        self._send(f"{tag} OK CAPABILITY completed")

    def _cmd_noop(self, tag: str, args: bytes) -> None:
        self._send(f"{tag} OK NOOP completed")

    def _cmd_login(self, tag: str, args: bytes) -> None:
        tokens = _tokens(args)
        box = self.server.mailbox
        if box.oauth is not None:
            self._send(f"{tag} NO [PRIVACYREQUIRED] LOGIN failed: basic authentication is disabled")
            return
        if len(tokens) == 2 and tokens[0] == box.user.encode() and tokens[1] == box.password.encode():
            self.authenticated = True
            self._send(f"{tag} OK [CAPABILITY {self._capabilities()}] LOGIN completed")
        else:
            self._send(f"{tag} NO [AUTHENTICATIONFAILED] invalid credentials")

    def _cmd_authenticate(self, tag: str, args: bytes) -> None:
        """SASL XOAUTH2 as Gmail and Exchange Online speak it: an empty challenge, the client's base64 string;
        a refused token gets a base64 JSON error challenge that the client must answer with an empty line."""
        box = self.server.mailbox
        mechanism, _, initial = args.partition(b" ")
        if box.oauth is None or mechanism.upper() != b"XOAUTH2" or self.authenticated:
            self._send(f"{tag} BAD unsupported authentication mechanism")
            return
        if not initial:
            self._send("+ ")
            line = self._readline(timeout=None)
            if line is None:
                return
            initial = line
        try:
            fields = b64decode(initial, validate=True).decode().split("\x01")
        except (ValueError, UnicodeDecodeError):
            self._send(f"{tag} BAD invalid base64")
            return
        user = fields[0].removeprefix("user=") if fields and fields[0].startswith("user=") else ""
        auth = fields[1] if len(fields) == 4 and fields[2:] == ["", ""] else ""
        token = auth.removeprefix("auth=Bearer ") if auth.startswith("auth=Bearer ") else ""
        if user and token and box.oauth(user, token):
            with box.changed:
                box.authentications.append("ok")
            self.authenticated = True
            self._send(f"{tag} OK [CAPABILITY {self._capabilities()}] AUTHENTICATE completed")
            return
        with box.changed:
            box.authentications.append("refused")
        error = b'{"status":"401","schemes":"Bearer","scope":"https://mail.google.com/"}'
        self._send("+ " + b64encode(error).decode())
        answer = self._readline(timeout=None)
        if answer is None:
            return
        self._send(f"{tag} NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)")

    def _cmd_select(self, tag: str, args: bytes) -> None:
        box = self.server.mailbox
        tokens = _tokens(args)
        if not self.authenticated or len(tokens) != 1 or tokens[0].decode().upper() != box.name.upper():
            self._send(f"{tag} NO no such mailbox")
            return
        with box.changed:
            self.reported = len(box.mails)
            self._send(f"* {self.reported} EXISTS")
            self._send("* 0 RECENT")
            self._send("* FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft)")
            self._send(f"* OK [UIDVALIDITY {box.uidvalidity}] UIDs valid")
            self._send(f"* OK [UIDNEXT {box.next_uid}] predicted next UID")
        self.selected = True
        self._send(f"{tag} OK [READ-WRITE] SELECT completed")

    def _cmd_uid(self, tag: str, args: bytes) -> None:
        if not self.selected:
            self._send(f"{tag} BAD select a mailbox first")
            return
        sub, _, rest = args.partition(b" ")
        handler = {b"SEARCH": self._uid_search, b"FETCH": self._uid_fetch, b"STORE": self._uid_store}.get(
            sub.upper()
        )
        if handler is None:
            self._send(f"{tag} BAD unknown UID command")
            return
        handler(tag, rest)

    def _uid_search(self, tag: str, args: bytes) -> None:
        box = self.server.mailbox
        tokens = [t.upper() for t in _tokens(args)]
        with box.changed:
            found = list(box.mails)
            position = 0
            while position < len(tokens):
                token = tokens[position]
                if token == b"ALL":
                    pass
                elif token == b"UNSEEN":
                    found = [m for m in found if "\\Seen" not in m.flags]
                elif token == b"UID" and position + 1 < len(tokens):
                    position += 1
                    wanted = _uid_set(tokens[position], box.next_uid - 1)
                    found = [m for m in found if m.uid in wanted]
                else:
                    self._send(f"{tag} BAD unsupported search key")
                    return
                position += 1
            uids = " ".join(str(m.uid) for m in found)
        self._send(f"* SEARCH {uids}".rstrip())
        self._report_exists()
        self._send(f"{tag} OK SEARCH completed")

    def _uid_fetch(self, tag: str, args: bytes) -> None:
        box = self.server.mailbox
        uid_set, _, items = args.partition(b" ")
        with box.changed:
            wanted = _uid_set(uid_set, box.next_uid - 1)
            mails = [(number, mail) for number, mail in enumerate(box.mails, start=1) if mail.uid in wanted]
        for number, mail in mails:
            out = [f"UID {mail.uid}".encode()]
            literal: bytes | None = None
            upper = items.upper()
            if b"FLAGS" in upper.replace(b"+FLAGS", b""):
                out.append(f"FLAGS ({' '.join(sorted(mail.flags))})".encode())
            if b"RFC822.SIZE" in upper:
                out.append(f"RFC822.SIZE {len(mail.raw)}".encode())
            body = _PARTIAL.search(items)
            if body is not None and mail.uid in box.fail_fetch:
                self._send(f"{tag} NO [UNAVAILABLE] message temporarily unavailable")
                return
            if body is not None:
                peek, start, length = body.group(1), body.group(2), body.group(3)
                data = mail.raw
                label = b"BODY[]"
                if start is not None and length is not None:
                    data = data[int(start) : int(start) + int(length)]
                    label = f"BODY[]<{int(start)}>".encode()
                if not peek:
                    mail.flags.add("\\Seen")
                with box.changed:
                    box.fetched.append((self.number, mail.uid))
                literal = data
                out.append(label + f" {{{len(data)}}}".encode())
            head = f"* {number} FETCH (".encode() + b" ".join(out)
            if literal is None:
                self._send_bytes(head + b")\r\n")
            else:
                self._send_bytes(head + b"\r\n" + literal + b")\r\n")
        self._report_exists()
        self._send(f"{tag} OK FETCH completed")

    def _uid_store(self, tag: str, args: bytes) -> None:
        box = self.server.mailbox
        tokens = _tokens(args)
        if len(tokens) != 3 or not tokens[1].upper().startswith(b"+FLAGS"):
            self._send(f"{tag} BAD only +FLAGS is supported")
            return
        flags = {f.decode() for f in tokens[2].strip(b"()").split()}
        with box.changed:
            wanted = _uid_set(tokens[0], box.next_uid - 1)
            for mail in box.mails:
                if mail.uid in wanted:
                    mail.flags |= flags
        self._send(f"{tag} OK STORE completed")

    def _cmd_idle(self, tag: str, args: bytes) -> None:
        box = self.server.mailbox
        if not box.idle or not self.selected:
            self._send(f"{tag} BAD IDLE not available")
            return
        self._send("+ idling")
        while not self.server.closing.is_set():
            self._report_exists()
            line = self._readline(timeout=0.05)
            if line is not None and line.upper() == b"DONE":
                self._send(f"{tag} OK IDLE terminated")
                return
            if line is None and self._closed:
                return

    # --- wire -----------------------------------------------------------------------------------------

    _closed = False

    def _capabilities(self) -> str:
        box = self.server.mailbox
        auth = " AUTH=XOAUTH2 LOGINDISABLED" if box.oauth is not None else ""
        return ("IMAP4rev1 IDLE" if box.idle else "IMAP4rev1") + auth

    def _readline(self, timeout: float | None) -> bytes | None:
        """One line without CRLF; None on timeout or when the client went away (then `_closed` is set)."""
        while b"\r\n" not in self.buffer:
            if timeout is not None:
                ready, _, _ = select.select([self.request], [], [], timeout)
                if not ready:
                    return None
            try:
                chunk = self.request.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                self._closed = True
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def _send(self, line: str) -> None:
        self._send_bytes(line.encode() + b"\r\n")

    def _send_bytes(self, data: bytes) -> None:
        try:
            self.request.sendall(data)
        except OSError:
            self._closed = True


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, mailbox: Mailbox) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.mailbox = mailbox
        self.closing = threading.Event()


def _tokens(args: bytes) -> list[bytes]:
    tokens = []
    for quoted, group, atom in _TOKEN.findall(args):
        if quoted:
            tokens.append(re.sub(rb"\\(.)", rb"\1", quoted))
        else:
            tokens.append(group or atom)
    return tokens


def _uid_set(text: bytes, highest: int) -> set[int]:
    """The UIDs of an IMAP sequence set; `*` is the highest UID in use, so `n:*` always holds it (RFC 3501)."""
    wanted: set[int] = set()
    for part in text.decode().split(","):
        low, _, high = part.partition(":")
        first = highest if low == "*" else int(low)
        last = first if not high else (highest if high == "*" else int(high))
        wanted.update(range(min(first, last), max(first, last) + 1))
    return wanted


@contextmanager
def imap_server(mailbox: Mailbox) -> Iterator[tuple[str, int]]:
    """Serve `mailbox` on 127.0.0.1; yields (host, port)."""
    server = _Server(mailbox)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield str(host), int(port)
    finally:
        server.closing.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


__all__ = ["Mail", "Mailbox", "imap_server"]
