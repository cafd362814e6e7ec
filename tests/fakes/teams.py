"""A fake of the Bot Framework on loopback: OpenID metadata and signing keys, the token endpoint, a connector.

The test signs activities with `issue(...)` (an RSA key made at run time, published in the JWKS with the
channel endorsements Microsoft's keys carry); the bot fetches client-credentials tokens from
`/{tenant}/oauth2/v2.0/token` and posts replies to `/emea/v3/conversations/{id}/activities`, which are
recorded. `/emea/v3/attachments/{id}/views/original` serves pasted pictures (token needed) and
`/files/{name}` pre-signed file downloads.

Refused like Microsoft refuses them: a token request to another tenant than the app's (a single-tenant app
is unknown to the botframework.com authority, AADSTS700016), a scope other than the Bot Framework's, an
activity body over the connector's limit (413), an activity posted to a conversation it does not name.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

ISSUER = "https://api.botframework.com"
KEY_ID = "fake-bf-key-1"
TENANT = "8b7e4d21-05c3-4a9f-b6e2-9d1f0c3a7e58"  # the app's (single) tenant: the samples' tenant id
SCOPE = "https://api.botframework.com/.default"
MAX_ACTIVITY_BYTES = 40_000  # the connector answers 413 (MessageSizeTooBig) above about this
APP_ID = "3f2a9c1e-7b4d-4e8a-9f06-1c5d2b8e7a43"  # the bot's Microsoft app id: its "28:" id in the samples
PASSWORD = "app-password-for-tests"  # the app's client secret
PAYLOADS = Path(__file__).parent.parent / "payloads" / "teams"


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class BotFramework:
    """The fake's state: what it received, and what it serves."""

    app_id: str
    app_password: str
    key: rsa.RSAPrivateKey = field(default_factory=new_key)
    activities: list[dict[str, Any]] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    key_requests: int = 0
    files: dict[str, bytes] = field(default_factory=dict)
    issued: list[str] = field(default_factory=list)
    fail_next: list[int] = field(
        default_factory=list
    )  # statuses the connector answers before it accepts again
    tenant: str = TENANT
    refused: list[tuple[str, int]] = field(default_factory=list)  # (what, status) the fake refused
    # While cleared, file downloads wait (in a thread) until a test sets it: shows when the bot fetches them.
    downloads_open: threading.Event = field(default_factory=lambda: _set(threading.Event()))
    downloads: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    # --- what the test uses -----------------------------------------------------------------------------

    def issue(
        self,
        *,
        service_url: str | None,
        audience: str | None = None,
        issuer: str = ISSUER,
        expires_in: int = 3600,
        key: rsa.RSAPrivateKey | None = None,
        kid: str = KEY_ID,
    ) -> str:
        """A Bot Connector token for one activity, signed with the published key unless told otherwise;
        `service_url=None` leaves the serviceurl claim out."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": issuer,
            "aud": audience or self.app_id,
            "nbf": now - 60,
            "iat": now - 60,
            "exp": now + expires_in,
        }
        if service_url is not None:
            claims["serviceurl"] = service_url
        pem = (key or self.key).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return jwt.encode(claims, pem, algorithm="RS256", headers={"kid": kid})

    def posted(self) -> list[dict[str, Any]]:
        with self.lock:
            return [entry["activity"] for entry in self.activities]

    # --- the fake's endpoints -----------------------------------------------------------------------------

    async def metadata(self, request: Request) -> Response:
        base = str(request.base_url).rstrip("/")
        return JSONResponse(
            {
                "issuer": ISSUER,
                "authorization_endpoint": "https://invalid.example/auth",
                "jwks_uri": f"{base}/v1/.well-known/keys",
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            }
        )

    async def keys(self, request: Request) -> Response:
        with self.lock:
            self.key_requests += 1
        public = jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return JSONResponse(
            {
                "keys": [
                    {
                        **public,
                        "kid": KEY_ID,
                        "use": "sig",
                        "x5t": KEY_ID,
                        "endorsements": ["msteams", "skype"],
                    }
                ]
            }
        )

    async def token(self, request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        with self.lock:
            self.token_requests.append(form)
            if request.path_params["tenant"] != self.tenant:
                self.refused.append(("tenant", 400))
                return JSONResponse(
                    {
                        "error": "unauthorized_client",
                        "error_codes": [700016],
                        "error_description": "AADSTS700016: Application with identifier "
                        f"'{form.get('client_id')}' was not found in the directory "
                        f"'{request.path_params['tenant']}'.",
                    },
                    status_code=400,
                )
            if form.get("scope") != SCOPE:
                self.refused.append(("scope", 400))
                return JSONResponse({"error": "invalid_scope", "error_codes": [70011]}, status_code=400)
            if (
                form.get("client_id") != self.app_id
                or form.get("client_secret") != self.app_password
                or form.get("grant_type") != "client_credentials"
            ):
                return JSONResponse({"error": "invalid_client"}, status_code=401)
            token = f"connector-token-{len(self.token_requests)}"
            self.issued.append(token)
        return JSONResponse(
            {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token}
        )

    def _authorised(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        with self.lock:
            return scheme == "Bearer" and token in self.issued

    async def post_activity(self, request: Request) -> Response:
        if not self._authorised(request):
            return JSONResponse({"error": {"code": "Unauthorized"}}, status_code=401)
        body = await request.body()
        if len(body) > MAX_ACTIVITY_BYTES:
            with self.lock:
                self.refused.append(("size", 413))
            return JSONResponse(
                {"error": {"code": "MessageSizeTooBig", "message": "Message size too big"}}, status_code=413
            )
        activity = json.loads(body)
        if (activity.get("conversation") or {}).get("id") != request.path_params["conversation_id"]:
            return JSONResponse(
                {"error": {"code": "BadArgument", "message": "conversation mismatch"}}, status_code=400
            )
        with self.lock:
            if self.fail_next:
                status = self.fail_next.pop(0)
                return JSONResponse(
                    {"error": {"code": "Failed", "message": "fake failure"}},
                    status_code=status,
                    headers={"Retry-After": "7"} if status == 429 else None,
                )
            self.activities.append(
                {
                    "conversation_id": request.path_params["conversation_id"],
                    "activity": activity,
                    "authorization": request.headers["authorization"],
                }
            )
            number = len(self.activities)
        return JSONResponse({"id": f"1777886{number:06d}"}, status_code=201)

    async def attachment(self, request: Request) -> Response:
        if not self._authorised(request):
            return Response(status_code=401)
        await self._wait_for_downloads(request.url.path)
        data = self.files.get(request.path_params["attachment_id"])
        return Response(data, media_type="image/*") if data is not None else Response(status_code=404)

    async def _wait_for_downloads(self, path: str) -> None:
        await asyncio.to_thread(self.downloads_open.wait, 30)
        with self.lock:
            self.downloads.append(path)

    async def download(self, request: Request) -> Response:
        await self._wait_for_downloads(request.url.path)
        data = self.files.get(request.path_params["name"])
        return (
            Response(data, media_type="application/octet-stream")
            if data is not None
            else Response(status_code=404)
        )

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/.well-known/openidconfiguration", self.metadata),
                Route("/v1/.well-known/keys", self.keys),
                Route("/{tenant}/oauth2/v2.0/token", self.token, methods=["POST"]),
                Route(
                    "/emea/v3/conversations/{conversation_id}/activities",
                    self.post_activity,
                    methods=["POST"],
                ),
                Route("/emea/v3/attachments/{attachment_id}/views/original", self.attachment),
                Route("/files/{name}", self.download),
            ]
        )


def _set(event: threading.Event) -> threading.Event:
    event.set()
    return event
