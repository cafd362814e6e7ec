"""Benchmark 2: the webhook path under load, against a floor and against python-telegram-bot's own stack.

Processes, all on loopback: the fake Bot API (bench.fake_telegram), the server under test, and the load
generator (bench.load). Servers under test, one at a time:
- ours: `warranty-bot serve` with TELEGRAM_MODE=webhook, the fake as TELEGRAM_API_BASE_URL, no PUBLIC_URL;
- floor: bench.floor, one durable INSERT per request on the same kind of database;
- peer: bench.ptb_peer, python-telegram-bot's ConversationHandler + PicklePersistence.
Ours and the peer run twice, as two pairs: (a) as deployed, ours within Telegram's limits (the defaults) and
the peer with python-telegram-bot's AIORateLimiter; (b) unpaced, ours with both limits 0 and the peer without
a rate limiter, which compares the pipelines alone. The fake answers at once and never refuses (429).
Each gets a warm-up, a `blast` phase (accepted/s, webhook latency, replies delivered/s) and an `interactive`
phase (end-to-end latency: a customer's message to the bot's last reply to it, at the fake API).
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    PYTHON,
    REPO,
    Table,
    child_env,
    database,
    load_average,
    ms,
    percentile,
    ratio,
    rss_mib,
    say,
)
from bench.script import SCRIPT, SCRIPT_REPLIES
from bot.store import make_engine, upgrade
from tests.fakes.server import free_port

TOKEN = "7391046285:AAHbenchTokenForLoopbackOnly_0123456789"  # noqa: S105 (a fake's token)
SECRET = "bench-webhook_secret-7c1d"  # noqa: S105
WARRANTY_BOT = str(Path(PYTHON).with_name("warranty-bot"))
REPLIES_PER_CONVERSATION = sum(SCRIPT_REPLIES)
COLD_MESSAGES = 10  # the first message after start is compared with the tenth
# The two comparisons of ours with the peer, by how each paces its sends to the Bot API.
PAIRS = {"paced": "(a) as deployed", "unpaced": "(b) unpaced pipeline"}
PEER = "python-telegram-bot"
PACE = {
    ("ours", "paced"): "Telegram's limits: 30/s, 1/s a chat after 3 (the defaults)",
    ("ours", "unpaced"): "none (both limits 0)",
    (PEER, "paced"): "AIORateLimiter(): 30/s, 20/min a group, none a private chat",
    (PEER, "unpaced"): "none (python-telegram-bot's default)",
}
# The peer of each pair, in the ratios (2b) and the targets (0).
PEER_IN_PAIR = {"paced": f"{PEER} with AIORateLimiter", "unpaced": f"{PEER} unpaced"}
# Telegram's FAQ pace, as ours keeps it, for counting the sends that went faster (a jitter margin: 0.9 s).
FAQ_WINDOW = 0.9
FAQ_BOT = 30
FAQ_CHAT = 3


@dataclass
class Sizes:
    warmup: int
    blast: int
    interactive: int
    concurrency: int
    customers: int  # interactive phase: few enough that the latency carries no queue
    drain_timeout: float


@dataclass
class Outcome:
    """What one server did under one phase of load."""

    name: str
    database: str
    pace: str = ""  # paced | unpaced (ours and the peer); "" for the floor
    accepted: int = 0
    accept_seconds: float = 0.0
    http_latencies: list[float] = field(default_factory=list)
    replies: int | None = None
    replies_expected: int = 0
    reply_seconds: float = 0.0
    e2e_latencies: list[float] = field(default_factory=list)
    interactive_seconds: float = 0.0
    interactive_messages: int = 0
    errors: int = 0
    rss_idle: float = 0.0
    rss_peak: float = 0.0
    load: str = ""
    cold: list[float] = field(default_factory=list)  # end-to-end of the first messages after start, in order
    chats: list[int] = field(default_factory=list)  # every chat this server was sent, all phases
    over_bot: int | None = None  # replies sent faster than Telegram's FAQ pace for the whole bot
    over_chat: int | None = None  # ... for one chat

    @property
    def accepted_per_second(self) -> float:
        return self.accepted / self.accept_seconds if self.accept_seconds else float("nan")

    @property
    def replies_per_second(self) -> float:
        if self.replies is None or not self.reply_seconds:
            return float("nan")
        return self.replies / self.reply_seconds


class Server:
    """A server process on a free loopback port, its output kept in a log file; stopped with SIGINT."""

    def __init__(self, name: str, command: Sequence[str], workdir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.port = free_port()
        self.log = workdir / f"{name}-{self.port}.log"
        self.command = [c.replace("{port}", str(self.port)) for c in command]
        self.env = env
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir
            )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start:\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} did not start:\n{self.log.read_text()[-3000:]}")

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


class PeakMemory:
    """Samples a process's VmRSS while load runs; VmHWM at the end covers what sampling missed."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self.done.wait(0.2):
            self.peak = max(self.peak, rss_mib(self.pid)[0])

    def __enter__(self) -> PeakMemory:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.done.set()
        self.thread.join(timeout=5)
        self.peak = max(self.peak, rss_mib(self.pid)[0])


def load(
    url: str, fake: str, *, mode: str, conversations: int, concurrency: int, chat_base: int, update_base: int
) -> dict[str, Any]:
    """Run the load generator in its own process; its JSON report."""
    command = [
        PYTHON,
        "-m",
        "bench.load",
        "--url",
        f"{url}/telegram/webhook",
        "--secret",
        SECRET,
        "--fake",
        fake,
        "--mode",
        mode,
        "--conversations",
        str(conversations),
        "--concurrency",
        str(concurrency),
        "--chat-base",
        str(chat_base),
        "--update-base",
        str(update_base),
    ]
    done = subprocess.run(command, capture_output=True, env=child_env(), cwd=REPO, timeout=900, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed: {done.stderr.decode()[-3000:]}")
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def replies_so_far(fake: str) -> dict[str, list[float]]:
    result: dict[str, list[float]] = httpx.get(f"{fake}/_bench/sent", timeout=30).json()
    return result


def wait_for_replies(
    fake: str, chats: Sequence[int], expected: int, timeout: float
) -> dict[str, list[float]]:
    """The fake's reply times once every chat got all its replies, or when `timeout` passed."""
    deadline = time.monotonic() + timeout
    while True:
        sent = replies_so_far(fake)
        got = sum(len(sent.get(str(c), ())) for c in chats)
        if got >= expected or time.monotonic() > deadline:
            return sent
        time.sleep(0.1)


class Counter:
    """Distinct chat and update ids for every phase of every server, so their replies never mix."""

    def __init__(self) -> None:
        self.next_chat = 6_100_000_000
        self.next_update = 900_000_000

    def take(self, conversations: int) -> tuple[int, int]:
        chat, update = self.next_chat, self.next_update
        self.next_chat += conversations + 1
        self.next_update += conversations * 10 + 10
        return chat, update


def over_pace(times: Sequence[float], limit: int) -> int:
    """How many of these send times had more than `limit` sends (itself included) in the FAQ_WINDOW up to it."""
    ordered = sorted(times)
    over = start = 0
    for end, at in enumerate(ordered):
        while ordered[start] <= at - FAQ_WINDOW:
            start += 1
        over += end - start + 1 > limit
    return over


def exercise(
    server: Server,
    fake: str,
    name: str,
    kind: str,
    sizes: Sizes,
    counter: Counter,
    *,
    replies: bool,
    pace: str = "",
) -> Outcome:
    """Warm up, then blast, then interactive (when the server replies)."""
    assert server.process is not None
    outcome = Outcome(name=name, database=kind, pace=pace)
    outcome.rss_idle = rss_mib(server.process.pid)[0]

    def take(conversations: int) -> tuple[int, int]:
        chat, update = counter.take(conversations)
        outcome.chats.extend(range(chat, chat + conversations))
        return chat, update

    label = f"{name} ({pace})" if pace else name
    if replies:
        # The first messages after start, one at a time: the first pays for whatever loads on first use.
        say(f"webhook: {label} on {kind}: first {COLD_MESSAGES} messages after start, one at a time")
        chat, update = take(COLD_MESSAGES // len(SCRIPT) + 1)
        report = load(
            server.url,
            fake,
            mode="interactive",
            conversations=-(-COLD_MESSAGES // len(SCRIPT)),
            concurrency=1,
            chat_base=chat,
            update_base=update,
        )
        outcome.cold = report["e2e"]
        outcome.errors += report["error_count"]
    if sizes.warmup:
        say(f"webhook: {label} on {kind}: warm-up")
        chat, update = take(sizes.warmup)
        load(
            server.url,
            fake,
            mode="blast",
            conversations=sizes.warmup,
            concurrency=sizes.concurrency,
            chat_base=chat,
            update_base=update,
        )
        if replies:
            wait_for_replies(
                fake,
                range(chat, chat + sizes.warmup),
                sizes.warmup * REPLIES_PER_CONVERSATION,
                sizes.drain_timeout,
            )

    say(
        f"webhook: {label} on {kind}: blast, {sizes.blast} conversations ({sizes.blast * len(SCRIPT)} updates), "
        f"concurrency {sizes.concurrency}"
    )
    chat, update = take(sizes.blast)
    with PeakMemory(server.process.pid) as memory:
        report = load(
            server.url,
            fake,
            mode="blast",
            conversations=sizes.blast,
            concurrency=sizes.concurrency,
            chat_base=chat,
            update_base=update,
        )
        if replies:
            expected = sizes.blast * REPLIES_PER_CONVERSATION
            sent = wait_for_replies(fake, range(chat, chat + sizes.blast), expected, sizes.drain_timeout)
            times = [t for c in range(chat, chat + sizes.blast) for t in sent.get(str(c), ())]
            outcome.replies = len(times)
            outcome.replies_expected = expected
            outcome.reply_seconds = (max(times) - report["start"]) if times else 0.0
    outcome.rss_peak = max(memory.peak, outcome.rss_idle)
    ok = [r for r in report["requests"] if r[4] == 200]
    outcome.accepted = len(ok)
    outcome.errors = report["error_count"]
    outcome.accept_seconds = report["end"] - report["start"]
    outcome.http_latencies = [r[3] - r[2] for r in ok]
    outcome.load = load_average()

    if replies and sizes.interactive:
        say(
            f"webhook: {label} on {kind}: interactive, {sizes.interactive} conversations, "
            f"{sizes.customers} customers waiting for replies"
        )
        chat, update = take(sizes.interactive)
        report = load(
            server.url,
            fake,
            mode="interactive",
            conversations=sizes.interactive,
            concurrency=sizes.customers,
            chat_base=chat,
            update_base=update,
        )
        outcome.e2e_latencies = report["e2e"]
        outcome.interactive_seconds = report["end"] - report["start"]
        outcome.interactive_messages = len(report["e2e"])
        outcome.errors += report["error_count"]
    if replies:
        sent = replies_so_far(fake)
        per_chat = [sent.get(str(c), []) for c in outcome.chats]
        outcome.over_bot = over_pace([t for times in per_chat for t in times], FAQ_BOT)
        outcome.over_chat = sum(over_pace(times, FAQ_CHAT) for times in per_chat)
    return outcome


@contextlib.contextmanager
def our_server(url: str, fake: str, workdir: Path, pace: str) -> Iterator[Server]:
    # Paced: the defaults (child_env passes no TELEGRAM_* setting on); unpaced: both limits 0.
    unpaced = {"TELEGRAM_MESSAGES_PER_SECOND": "0", "TELEGRAM_CHAT_MESSAGES_PER_SECOND": "0"}
    env = child_env(
        **(unpaced if pace == "unpaced" else {}),
        DATABASE_URL=url,
        DATA_DIR=str(workdir / "data"),
        ATTACHMENTS_DIR=str(workdir / "data" / "attachments"),
        TELEGRAM_BOT_TOKEN=TOKEN,
        TELEGRAM_MODE="webhook",
        TELEGRAM_WEBHOOK_SECRET=SECRET,
        TELEGRAM_API_BASE_URL=fake,
        LOG_LEVEL="WARNING",
        OUTBOX_POLL_SECONDS="0.5",
    )
    with Server(
        "ours", [WARRANTY_BOT, "serve", "--host", "127.0.0.1", "--port", "{port}"], workdir, env
    ) as s:
        yield s


def run(databases: tuple[str, ...], workdir: Path, *, quick: bool) -> list[Table]:
    sizes = (
        Sizes(warmup=0, blast=2, interactive=1, concurrency=2, customers=1, drain_timeout=60)
        if quick
        else Sizes(warmup=5, blast=250, interactive=60, concurrency=40, customers=4, drain_timeout=300)
    )
    counter = Counter()
    outcomes: list[Outcome] = []
    with Server(
        "fake-telegram", [PYTHON, "-m", "bench.fake_telegram", "--port", "{port}"], workdir, child_env()
    ) as fake:
        for kind in databases:
            for pace in PAIRS:
                with database(kind, workdir, f"webhook-{pace}") as url:
                    engine = make_engine(url)
                    upgrade(engine)
                    engine.dispose()
                    with our_server(url, fake.url, workdir, pace) as server:
                        outcomes.append(
                            exercise(server, fake.url, "ours", kind, sizes, counter, replies=True, pace=pace)
                        )
            with database(kind, workdir, "floor") as url:
                command = [
                    PYTHON,
                    "-m",
                    "bench.floor",
                    "--port",
                    "{port}",
                    "--database-url",
                    url,
                    "--secret",
                    SECRET,
                ]
                with Server("floor", command, workdir, child_env()) as server:
                    outcomes.append(exercise(server, fake.url, "floor", kind, sizes, counter, replies=False))
        for pace in PAIRS:
            command = [
                PYTHON,
                "-m",
                "bench.ptb_peer",
                "--port",
                "{port}",
                "--api",
                fake.url,
                "--token",
                TOKEN,
                "--secret",
                SECRET,
                "--persistence",
                str(workdir / f"ptb-peer-{pace}.pickle"),
                *(["--rate-limiter"] if pace == "paced" else []),
            ]
            with Server(f"ptb-peer-{pace}", command, workdir, child_env()) as server:
                outcomes.append(
                    exercise(server, fake.url, PEER, "pickle file", sizes, counter, replies=True, pace=pace)
                )
    return tabulate(outcomes, sizes)


def _ratios(ours: Outcome, other: Outcome) -> tuple[str, ...]:
    def both(values: str, fraction: float) -> str:
        return ratio(
            percentile(getattr(ours, values), fraction), percentile(getattr(other, values), fraction)
        )

    replies = ratio(ours.replies_per_second, other.replies_per_second) if other.replies is not None else "–"
    return (
        ratio(ours.accepted_per_second, other.accepted_per_second),
        both("http_latencies", 0.5),
        both("http_latencies", 0.99),
        replies,
        both("e2e_latencies", 0.5) if other.e2e_latencies else "–",
        both("e2e_latencies", 0.99) if other.e2e_latencies else "–",
    )


def _quotient(ours: float, theirs: float) -> float:
    return ours / theirs if theirs and theirs == theirs and ours == ours else float("nan")


def tabulate(outcomes: list[Outcome], sizes: Sizes) -> list[Table]:
    table = Table(
        title="2. Webhook path under load (Telegram-shaped updates over loopback HTTP)",
        columns=(
            "server",
            "sending pace",
            "storage",
            "accepted/s",
            "webhook p50 ms",
            "webhook p99 ms",
            "replies delivered/s",
            "replies",
            "end-to-end p50 ms",
            "end-to-end p99 ms",
            "1st message after start ms",
            "10th message ms",
            "sends over the FAQ pace (bot / chat)",
            "errors",
            "RSS idle MiB",
            "RSS peak MiB",
            "load avg",
        ),
    )
    for o in outcomes:
        table.rows.append(
            (
                o.name,
                PACE.get((o.name, o.pace), "–"),
                o.database,
                f"{o.accepted_per_second:.0f}",
                ms(percentile(o.http_latencies, 0.5)),
                ms(percentile(o.http_latencies, 0.99)),
                "–" if o.replies is None else f"{o.replies_per_second:.0f}",
                "–" if o.replies is None else f"{o.replies}/{o.replies_expected}",
                ms(percentile(o.e2e_latencies, 0.5)),
                ms(percentile(o.e2e_latencies, 0.99)),
                ms(o.cold[0]) if o.cold else "–",
                ms(o.cold[COLD_MESSAGES - 1]) if len(o.cold) >= COLD_MESSAGES else "–",
                "–" if o.over_bot is None else f"{o.over_bot} / {o.over_chat}",
                str(o.errors),
                f"{o.rss_idle:.0f}",
                f"{o.rss_peak:.0f}",
                o.load,
            )
        )
    ratios = Table(
        title="2b. Webhook ratios: ours ÷ the other (accepted/s and replies/s: higher is better; latency: lower)",
        columns=(
            "database",
            "pair",
            "ours ÷",
            "accepted/s",
            "webhook p50",
            "webhook p99",
            "replies delivered/s",
            "end-to-end p50",
            "end-to-end p99",
            "target",
        ),
    )
    for ours in (o for o in outcomes if o.name == "ours"):
        db, pace = ours.database, ours.pace
        floor = next((f for f in outcomes if f.name == "floor" and f.database == db), None)
        peer = next((o for o in outcomes if o.name == PEER and o.pace == pace), None)
        if floor is not None:
            ratios.rows.append((db, PAIRS[pace], "floor", *_ratios(ours, floor), "accepted/s ≥ 1×"))
            table.figures[f"accepted vs floor {pace} {db}"] = _quotient(
                ours.accepted_per_second, floor.accepted_per_second
            )
        if peer is not None:
            ratios.rows.append(
                (
                    db,
                    PAIRS[pace],
                    PEER_IN_PAIR[pace],
                    *_ratios(ours, peer),
                    "replies/s ≥ 1×, e2e p99 ≤ 2×",
                )
            )
            table.figures[f"replies vs peer {pace} {db}"] = _quotient(
                ours.replies_per_second, peer.replies_per_second
            )
            for fraction, label in ((0.5, "p50"), (0.99, "p99")):
                table.figures[f"e2e {label} vs peer {pace} {db}"] = _quotient(
                    percentile(ours.e2e_latencies, fraction), percentile(peer.e2e_latencies, fraction)
                )
    for o in outcomes:
        if len(o.cold) >= COLD_MESSAGES:
            who = f"peer {o.pace}" if o.name == PEER else f"{o.name} {o.pace} {o.database}"
            table.figures[f"first vs tenth {who}"] = _quotient(o.cold[0], o.cold[COLD_MESSAGES - 1])
            table.figures[f"first ms {who}"] = o.cold[0] * 1000
            table.figures[f"tenth ms {who}"] = o.cold[COLD_MESSAGES - 1] * 1000
    table.notes.append(
        f"Blast: {sizes.blast} conversations × {len(SCRIPT)} updates, {sizes.concurrency} concurrent connections, "
        "each chat's next update sent when the previous one was answered (as Telegram does); accepted/s = "
        "HTTP 200s over the load's wall time. Replies delivered/s = replies that reached the fake Bot API over "
        "the time from the first update to the last reply. Interactive: "
        f"{sizes.interactive} conversations by {sizes.customers} customers at a time who wait for the bot's "
        "replies before the next message (a light load, so the latency carries no queue); end-to-end = update "
        "sent → the bot's last reply to it at the fake API. 1st and 10th message: right after the server "
        f"answered its health check, {COLD_MESSAGES} messages sent one at a time, each after the bot's replies "
        "to the previous one (end-to-end, as above)."
    )
    table.notes.append(
        "Two pairs, the same load for each server. (a) As deployed: ours paces its sends within Telegram's "
        "published limits (TELEGRAM_MESSAGES_PER_SECOND=30, TELEGRAM_CHAT_MESSAGES_PER_SECOND=1 after a burst "
        "of 3), and the peer uses python-telegram-bot's own AIORateLimiter with its defaults (30/s for the "
        "bot, 20/min to a group: nothing per private chat, so a customer's replies go out together). At 30/s, "
        f"the {sizes.blast * REPLIES_PER_CONVERSATION} blast replies take at least "
        f"{sizes.blast * REPLIES_PER_CONVERSATION / 30:.1f} s for either. (b) Unpaced pipeline: ours with both "
        "limits 0 and the peer without a rate limiter, which python-telegram-bot is by default: what each "
        "pipeline does when sending costs nothing. Against api.telegram.org, (b) would be answered 429 above "
        "the limits: ours waits as told and sends again; the peer's handler fails and the reply is lost (so "
        "it is in (a) too: AIORateLimiter retries a 429 only when given max_retries, 0 by default)."
    )
    table.notes.append(
        f"Sends over the FAQ pace: replies that reached the fake with more than {FAQ_BOT} of the server's "
        f"sends in the {FAQ_WINDOW} s up to them (the bot), or more than {FAQ_CHAT} to the same chat (one "
        "chat: about one a second after a short burst), over every phase. Telegram tolerates short bursts "
        "and does not publish exact thresholds: these are the sends ours would have held back, not a count "
        "of 429s. The fake never refuses."
    )
    table.notes.append(
        "Ours acknowledges after a durable INSERT (inbox) and replies from its own worker and outbox. The floor "
        "acknowledges after a durable INSERT and does nothing else. python-telegram-bot acknowledges after an "
        "in-memory queue put (nothing durable: PicklePersistence writes its file every 60 s) and processes one "
        "update at a time (concurrent_updates off, the default)."
    )
    return [table, ratios]
