"""Builds the bot's parts from settings: database, policy, renderer, engine, desk, attachment storage."""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass

from sqlalchemy import Engine as DbEngine

from bot.attachments import AttachmentStore
from bot.config import Settings
from bot.desk import Desk
from bot.engine import Engine, EngineConfig
from bot.fulfilment import Terms, parse_sla
from bot.render import Renderer
from bot.report import AlertRule
from bot.store import make_engine, upgrade
from bot.store.db import is_transient
from policy import Policy, default_policy, load_policy

log = logging.getLogger(__name__)


@dataclass
class Bot:
    settings: Settings
    db: DbEngine
    policy: Policy
    renderer: Renderer
    engine: Engine
    desk: Desk
    attachments: AttachmentStore


def load_policy_from(settings: Settings) -> Policy:
    return load_policy(settings.policy_file) if settings.policy_file else default_policy()


def build(
    settings: Settings,
    *,
    db: DbEngine | None = None,
    migrate: bool = True,
    external_desks: tuple[str, ...] = (),
    background_checkpoints: bool = False,
) -> Bot:
    """Wire the parts; `migrate` upgrades the schema first (SQLite always upgrades at start);
    `background_checkpoints`: see `make_engine` (the server and its workers)."""
    policy = load_policy_from(settings)
    db = db or make_engine(
        settings.database_url,
        synchronous=settings.sqlite_synchronous,
        background_checkpoints=background_checkpoints,
    )
    if migrate or db.dialect.name == "sqlite":
        upgrade(db)
    renderer = Renderer(policy)
    config = EngineConfig(
        case_ref_prefix=settings.case_ref_prefix,
        default_language=settings.default_language,
        max_text_chars=settings.max_text_chars,
        max_claim_units=settings.max_claim_units,
        public_url=settings.public_url,
        attachment_max_mb=max(1, settings.attachment_max_bytes // (1024 * 1024)),
        external_desks=external_desks,
        max_attempts=settings.inbox_max_attempts,
        batch_size=settings.inbox_batch_size,
        retry_backoff_max_seconds=settings.retry_backoff_max_seconds,
        batch_alerts=AlertRule(
            claims=settings.batch_alert_claims,
            rate=settings.batch_alert_rate,
            window_days=settings.batch_alert_window_days,
        ),
        fulfilment=Terms(
            rma_prefix=settings.rma_prefix,
            return_address=settings.return_address.replace("\\n", "\n"),
            packing_note=settings.packing_note,
            ship_reminder_days=settings.ship_reminder_days,
            sla_hours=parse_sla(settings.fulfilment_sla_hours),
        ),
    )
    engine = Engine(db=db, policy=policy, renderer=renderer, config=config)
    attachments = AttachmentStore(
        root=settings.attachments_dir,
        max_bytes=settings.attachment_max_bytes,
        allowed_types=settings.allowed_attachment_types,
    )
    return Bot(
        settings=settings,
        db=db,
        policy=policy,
        renderer=renderer,
        engine=engine,
        desk=Desk(engine),
        attachments=attachments,
    )


def freeze_loaded() -> None:
    """Leave what this process has loaded so far (modules, the language models, compiled templates: about
    200,000 objects) out of the garbage collector's full collections from now on (`gc.freeze`).

    A full collection went through all of it each time: 110-240 ms on the bench's machine, with every thread
    of the process stopped, so that a webhook's 2xx or a batch's replies waited behind it (issue 15: most of
    the end-to-end p99 of the webhook bench's interactive phase). What is loaded at start lives as long as
    the process and leaves no garbage (a collection after it finds none), so nothing is kept that would have
    been freed. It takes no time itself; later objects are collected as before."""
    gc.freeze()


def build_when_storage_allows(
    settings: Settings, *, external_desks: tuple[str, ...] = (), background_checkpoints: bool = False
) -> Bot:
    """Build the bot; while the database cannot be opened or upgraded for a passing reason (read-only or
    full storage, PostgreSQL not up yet), wait and try again rather than exit."""
    failures = 0
    while True:
        try:
            return build(
                settings, external_desks=external_desks, background_checkpoints=background_checkpoints
            )
        except Exception as error:
            if not is_transient(error):
                raise
            failures += 1
            log.warning("database not usable yet, trying again: %s", str(error).splitlines()[0][:300])
            time.sleep(min(settings.retry_backoff_max_seconds, 0.5 * failures))
