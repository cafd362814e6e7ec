"""A fake of the Bot Framework on loopback: OpenID metadata and signing keys, the token endpoint, a connector.

The test signs activities with `issue(...)` (an RSA key made at run time, published in the JWKS with the
channel endorsements Microsoft's keys carry); the bot fetches client-credentials tokens from
`/botframework.com/oauth2/v2.0/token` and posts replies to `/emea/v3/conversations/{id}/activities`,
which are recorded. `/emea/v3/attachments/{id}/views/original` serves pasted pictures (token needed) and
`/files/{name}` pre-signed file downloads.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
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
    fail_next: list[int] = field(default_factory=list)  # statuses the connector answers before it accepts again
    lock: threading.Lock = field(default_factory=threading.Lock)

    # --- what the test uses -----------------------------------------------------------------------------

    def issue(self, *, service_url: str, audience: str | None = None, issuer: str = ISSUER,
              expires_in: int = 3600, key: rsa.RSAPrivateKey | None = None, kid: str = KEY_ID) -> str:
        """A Bot Connector token for one activity, signed with the published key unless told otherwise."""
        now = int(time.time())
        claims = {"iss": issuer, "aud": audience or self.app_id, "serviceurl": service_url,
                  "nbf": now - 60, "iat": now - 60, "exp": now + expires_in}
        pem = (key or self.key).private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption())
        return jwt.encode(claims, pem, algorithm="RS256", headers={"kid": kid})

    def posted(self) -> list[dict[str, Any]]:
        with self.lock:
            return [entry["activity"] for entry in self.activities]

    # --- the fake's endpoints -----------------------------------------------------------------------------

    async def metadata(self, request: Request) -> Response:
        base = str(request.base_url).rstrip("/")
        return JSONResponse({"issuer": ISSUER, "authorization_endpoint": "https://invalid.example/auth",
                             "jwks_uri": f"{base}/v1/.well-known/keys",
                             "id_token_signing_alg_values_supported": ["RS256"],
                             "token_endpoint_auth_methods_supported": ["private_key_jwt"]})

    async def keys(self, request: Request) -> Response:
        with self.lock:
            self.key_requests += 1
        public = jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return JSONResponse({"keys": [{**public, "kid": KEY_ID, "use": "sig", "x5t": KEY_ID,
                                       "endorsements": ["msteams", "skype"]}]})

    async def token(self, request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        with self.lock:
            self.token_requests.append(form)
            if form.get("client_id") != self.app_id or form.get("client_secret") != self.app_password or \
                    form.get("grant_type") != "client_credentials":
                return JSONResponse({"error": "invalid_client"}, status_code=401)
            token = f"connector-token-{len(self.token_requests)}"
            self.issued.append(token)
        return JSONResponse({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599,
                             "access_token": token})

    def _authorised(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        with self.lock:
            return scheme == "Bearer" and token in self.issued

    async def post_activity(self, request: Request) -> Response:
        if not self._authorised(request):
            return JSONResponse({"error": {"code": "Unauthorized"}}, status_code=401)
        activity = await request.json()
        with self.lock:
            if self.fail_next:
                status = self.fail_next.pop(0)
                return JSONResponse({"error": {"code": "Failed", "message": "fake failure"}}, status_code=status,
                                    headers={"Retry-After": "7"} if status == 429 else None)
            self.activities.append({"conversation_id": request.path_params["conversation_id"], "activity": activity,
                                    "authorization": request.headers["authorization"]})
            number = len(self.activities)
        return JSONResponse({"id": f"1777886{number:06d}"}, status_code=201)

    async def attachment(self, request: Request) -> Response:
        if not self._authorised(request):
            return Response(status_code=401)
        data = self.files.get(request.path_params["attachment_id"])
        return Response(data, media_type="image/*") if data is not None else Response(status_code=404)

    async def download(self, request: Request) -> Response:
        data = self.files.get(request.path_params["name"])
        return Response(data, media_type="application/octet-stream") if data is not None else Response(status_code=404)

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/v1/.well-known/openidconfiguration", self.metadata),
            Route("/v1/.well-known/keys", self.keys),
            Route("/botframework.com/oauth2/v2.0/token", self.token, methods=["POST"]),
            Route("/emea/v3/conversations/{conversation_id}/activities", self.post_activity, methods=["POST"]),
            Route("/emea/v3/attachments/{attachment_id}/views/original", self.attachment),
            Route("/files/{name}", self.download),
        ])
