"""The one place that reads settings: the environment and `.env`, validated by pydantic-settings."""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Role(StrEnum):
    """What a worker does. `serve` starts its processing workers and one deliverer, each a process of its own
    (processing runs niced, and a thread of a niced process would hold the GIL its deliverer waits for); a
    standalone `warranty-bot worker` does both."""

    process = "process"
    deliver = "deliver"
    both = "both"


class ApiChannelSettings(BaseModel):
    """One channel of the generic API (adapters/api.py, docs/channels/api.md)."""

    secret: SecretStr = Field(min_length=16)  # signs both directions (HMAC-SHA256)
    callback_url: str = Field(pattern=r"^https?://")  # where the bot's replies are POSTed
    media_hosts: list[str] = []  # hosts attachment URLs may point at (https, public addresses; bot/fetch.py)


class Settings(BaseSettings):
    """Every setting of the bot. `.env.example` documents each one; names are the upper-case field names."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True
    )

    # --- core ---------------------------------------------------------------------------------------
    database_url: str = "sqlite:///var/warranty.db"
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    data_dir: Path = Path("var")
    attachments_dir: Path = Path("var/attachments")
    attachment_max_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    attachment_types: str = (
        "image/jpeg,image/png,image/webp,image/gif,image/heic,application/pdf,audio/amr,audio/ogg,audio/mpeg"
    )
    policy_file: Path | None = None
    case_ref_prefix: str = "WR"
    default_language: str = "en"
    log_level: str = "INFO"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    public_url: str = ""
    max_body_bytes: int = Field(default=2 * 1024 * 1024, gt=0)
    outbox_poll_seconds: float = Field(default=0.5, gt=0)
    outbox_max_attempts: int = Field(default=8, gt=0)
    outbox_retry_hours: float = Field(default=72.0, gt=0)
    retry_backoff_max_seconds: float = Field(default=60.0, gt=0)
    inbox_max_attempts: int = Field(default=5, gt=0)
    inbox_batch_size: int = Field(default=32, gt=0, le=1000)  # chats one worker transaction processes
    worker_id: str = Field(default="", max_length=128)
    max_text_chars: int = Field(default=4000, gt=0)
    max_claim_units: int = Field(default=1000, gt=0)

    # --- limits against slow, numerous and oversized requests (docs/operations.md, Security) ------------
    server_header_timeout_seconds: float = Field(default=10.0, gt=0)
    server_body_timeout_seconds: float = Field(default=30.0, gt=0)
    server_keep_alive_seconds: int = Field(default=5, gt=0)
    server_max_concurrency: int = Field(default=200, gt=0)
    forwarded_allow_ips: str = "127.0.0.1"
    max_json_depth: int = Field(default=64, gt=0)
    rate_limit_client: str = "60/minute"
    rate_limit_sessions: str = "10/minute;100/day"
    rate_limit_reads: str = "600/minute"
    rate_limit_global: str = "1200/minute"

    # --- batch alerts (docs/reports.md): a threshold of 0 is not used; both 0 = no alerts -----------------
    batch_alert_claims: int = Field(default=0, ge=0)  # claims of one batch within the window
    batch_alert_rate: float = Field(default=0.0, ge=0, le=1)  # claimed units per unit sold (registry)
    batch_alert_window_days: int = Field(default=30, gt=0, le=3660)

    registry_max_unpacked_bytes: int = Field(default=512 * 1024 * 1024, gt=0)

    # --- downloads (bot/fetch.py) ---------------------------------------------------------------------
    fetch_timeout_seconds: float = Field(default=30.0, gt=0)
    fetch_insecure_hosts: str = ""  # tests only: hosts reachable over http and on loopback/private addresses

    # --- fulfilment after the chosen method (bot/fulfilment.py, docs/fulfilment.md) ------------------------
    rma_prefix: str = Field(default="RMA", pattern=r"^[A-Z0-9]{1,10}$")
    return_address: str = ""  # the factory's return address for factory repair (M3); "\n" separates lines
    packing_note: str = ""  # added to the packing instructions, as written
    ship_reminder_days: int = Field(default=7, gt=0)  # a customer who has not shipped is reminded after these
    # Hours an engineer's step may wait before the desks are alerted, e.g. "received=48,diagnosed=72".
    fulfilment_sla_hours: str = (
        "in_transit=336,received=48,diagnosed=72,repaired=48,parts_pending=48,guiding=72"
    )
    fulfilment_check_seconds: float = Field(default=300.0, gt=0)  # how often reminders are looked for

    # --- local desk -----------------------------------------------------------------------------------
    desk_token: SecretStr | None = None
    desk_replies_file: Path | None = None  # canned replies (a TOML file like templates/desk_replies.toml)

    # --- Telegram -------------------------------------------------------------------------------------
    telegram_bot_token: SecretStr | None = None
    telegram_api_base_url: str = "https://api.telegram.org"
    telegram_webhook_secret: SecretStr | None = None
    telegram_mode: str = "auto"  # auto | webhook | polling
    telegram_timeout_seconds: float = Field(default=20.0, gt=0)
    # Sending pace (docs/channels/telegram.md, Sending limits); 0 = unpaced (a local Bot API server, a bench).
    # Over 30 a second, sends go as paid broadcasts (allow_paid_broadcast: 0.1 Stars a message, up to 1000/s).
    telegram_messages_per_second: float = Field(default=30.0, ge=0, le=1000)  # the whole bot
    telegram_chat_messages_per_second: float = Field(default=1.0, ge=0, le=1000)  # one chat, bursts of 3

    # --- Slack ----------------------------------------------------------------------------------------
    slack_bot_token: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None
    slack_app_token: SecretStr | None = None
    slack_api_url: str = "https://slack.com/api/"
    slack_escalation_channel: str = ""
    slack_engineer_ids: str = ""
    slack_remind_after: timedelta = timedelta(hours=2)
    slack_remind_group: str = ""
    slack_mode: str = "auto"  # auto | http | socket

    # --- WhatsApp -------------------------------------------------------------------------------------
    whatsapp_access_token: SecretStr | None = None
    whatsapp_app_secret: SecretStr | None = None
    whatsapp_verify_token: SecretStr | None = None
    whatsapp_phone_number_id: str = ""
    whatsapp_graph_url: str = "https://graph.facebook.com/v23.0"
    whatsapp_template_name: str = ""
    whatsapp_template_language: str = "en"  # comma-separated approved languages; the first is the fallback

    # --- WeChat ---------------------------------------------------------------------------------------
    wechat_app_id: str = ""
    wechat_app_secret: SecretStr | None = None
    wechat_token: SecretStr | None = None
    wechat_encoding_aes_key: SecretStr | None = None
    wechat_api_base_url: str = "https://api.weixin.qq.com"

    # --- Email ----------------------------------------------------------------------------------------
    imap_host: str = ""
    imap_port: int = 993
    imap_security: str = "tls"  # tls | starttls | none
    imap_user: str = ""
    imap_password: SecretStr | None = None
    imap_mailbox: str = "INBOX"
    imap_poll_seconds: float = Field(default=30.0, gt=0)
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_security: str = "starttls"  # tls | starttls | none
    smtp_user: str = ""
    smtp_password: SecretStr | None = None
    email_from: str = ""
    email_replies_per_hour: int = Field(default=20, gt=0)
    email_oauth: str = ""  # "" (passwords) | microsoft | google: XOAUTH2 for IMAP and SMTP
    email_oauth_client_id: str = ""
    email_oauth_client_secret: SecretStr | None = None
    email_oauth_tenant: str = ""  # Microsoft: the Entra tenant id or domain
    email_oauth_refresh_token: SecretStr | None = None  # Google
    email_oauth_url: str = ""  # empty: login.microsoftonline.com / oauth2.googleapis.com/token

    # --- Microsoft Teams (and legacy Skype) -------------------------------------------------------------
    teams_app_id: str = ""
    teams_app_password: SecretStr | None = None
    teams_tenant_id: str = "botframework.com"
    teams_openid_metadata_url: str = "https://login.botframework.com/v1/.well-known/openidconfiguration"
    # {tenant} becomes TEAMS_TENANT_ID: a single-tenant app gets its token from its own tenant's authority.
    teams_token_url: str = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"  # noqa: S105 (a URL)
    teams_issuer: str = "https://api.botframework.com"

    # --- LINE -----------------------------------------------------------------------------------------
    line_channel_secret: SecretStr | None = None
    line_channel_access_token: SecretStr | None = None
    line_api_base_url: str = "https://api.line.me"
    line_data_api_base_url: str = "https://api-data.line.me"

    # --- Viber ----------------------------------------------------------------------------------------
    viber_auth_token: SecretStr | None = None
    viber_bot_name: str = "Warranty support"
    viber_api_base_url: str = "https://chatapi.viber.com"
    viber_media_hosts: str = "*.viber.com"  # comma-separated; media URLs of pictures and files customers send

    # --- generic API channels (docs/channels/api.md) ------------------------------------------------------
    # JSON: {"name": {"secret": "...", "callback_url": "https://...", "media_hosts": ["files.example.com"]}}
    api_channels: dict[str, ApiChannelSettings] = {}
    api_signature_tolerance_seconds: int = Field(default=300, gt=0, le=3600)
    api_callback_timeout_seconds: float = Field(default=15.0, gt=0)

    # --- tests ----------------------------------------------------------------------------------------
    test_postgres_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

    @field_validator("api_channels")
    @classmethod
    def _api_channels(cls, value: dict[str, ApiChannelSettings]) -> dict[str, ApiChannelSettings]:
        import re

        for name in value:
            if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,31}", name):
                raise ValueError(
                    f"channel name {name!r}: 1-32 of a-z 0-9 _ -, starting with a letter or digit"
                )
        return value

    @field_validator("fulfilment_sla_hours")
    @classmethod
    def _sla(cls, value: str) -> str:
        from bot.fulfilment import parse_sla

        parse_sla(value)
        return value

    @field_validator("telegram_mode")
    @classmethod
    def _telegram_mode(cls, value: str) -> str:
        if value not in {"auto", "webhook", "polling"}:
            raise ValueError("must be auto, webhook or polling")
        return value

    @field_validator("slack_mode")
    @classmethod
    def _slack_mode(cls, value: str) -> str:
        if value not in {"auto", "http", "socket"}:
            raise ValueError("must be auto, http or socket")
        return value

    @field_validator("rate_limit_client", "rate_limit_sessions", "rate_limit_reads", "rate_limit_global")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        from limits import parse_many

        try:
            parse_many(value)
        except ValueError:
            raise ValueError("must be limits such as 60/minute or 10/minute;100/day") from None
        return value

    @property
    def fetch_insecure_host_set(self) -> frozenset[str]:
        return frozenset(h.strip().lower() for h in self.fetch_insecure_hosts.split(",") if h.strip())

    @property
    def allowed_attachment_types(self) -> frozenset[str]:
        return frozenset(t.strip() for t in self.attachment_types.split(",") if t.strip())


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings in force, read once per process."""
    return Settings()
