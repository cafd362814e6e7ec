"""A loopback OAuth 2.0 token endpoint as Microsoft Entra ID and Google run it, strict about what they refuse.

Microsoft (what msal asks): `GET /{tenant}/v2.0/.well-known/openid-configuration` and
`POST /{tenant}/oauth2/v2.0/token` with the client-credentials grant, a `.default` scope and the client secret.
Google: `POST /token` with the refresh-token grant. Both answer errors in the shape of RFC 6749 section 5.2.

The mail fakes ask `valid(user, token)` to check the bearer token inside a SASL XOAUTH2 string; `revoke_all()`
is what an expired or revoked token looks like to a client that still holds it.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

MICROSOFT_SCOPE = "https://outlook.office365.com/.default"
GOOGLE_SCOPE = "https://mail.google.com/"


@dataclass
class FakeTokenEndpoint:
    client_id: str
    client_secret: str
    tenant: str = "contoso.onmicrosoft.com"
    refresh_token: str = ""  # Google: the one refresh token the consent gave
    mailbox: str = ""  # the only user whose mail the tokens open
    base_url: str = ""  # set once served: the issuer and endpoints name it
    expires_in: int = 3599
    issued: list[str] = field(default_factory=list)  # every access token, in order
    requests: list[tuple[str, str]] = field(default_factory=list)  # (path, grant_type)
    revoked: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/{tenant}/v2.0/.well-known/openid-configuration", self._openid, methods=["GET"]),
                Route("/{tenant}/oauth2/v2.0/token", self._microsoft_token, methods=["POST"]),
                Route("/token", self._google_token, methods=["POST"]),
            ]
        )

    def valid(self, user: str, token: str) -> bool:
        with self.lock:
            return user.lower() == self.mailbox.lower() and token in self.issued and token not in self.revoked

    def revoke_all(self) -> None:
        with self.lock:
            self.revoked.update(self.issued)

    # --- handlers ------------------------------------------------------------------------------------------

    async def _openid(self, request: Request) -> Response:
        tenant = request.path_params["tenant"]
        if tenant != self.tenant:
            return _error(400, "invalid_tenant", f"AADSTS90002: Tenant '{tenant}' not found.")
        base = f"{self.base_url}/{tenant}"
        return JSONResponse(
            {
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "issuer": f"{base}/v2.0",
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "private_key_jwt",
                    "client_secret_basic",
                ],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            }
        )

    async def _microsoft_token(self, request: Request) -> Response:
        form = await request.form()
        grant = str(form.get("grant_type", ""))
        with self.lock:
            self.requests.append((request.url.path, grant))
        if request.path_params["tenant"] != self.tenant:
            return _error(400, "invalid_tenant", "AADSTS90002: Tenant not found.")
        if grant != "client_credentials":
            return _error(400, "unsupported_grant_type", "AADSTS70003: grant type not supported here.")
        if form.get("client_id") != self.client_id:
            return _error(400, "unauthorized_client", "AADSTS700016: Application not found in the directory.")
        if form.get("client_secret") != self.client_secret:
            return _error(401, "invalid_client", "AADSTS7000215: Invalid client secret provided.")
        scopes = str(form.get("scope", "")).split()
        if MICROSOFT_SCOPE not in scopes or any(
            not s.endswith("/.default") for s in scopes if s not in ("openid", "profile", "offline_access")
        ):
            return _error(
                400,
                "invalid_scope",
                "AADSTS1002012: The provided value for scope is not valid. "
                "Client credential flows must have a scope value with /.default.",
            )
        return self._issue(token_type="Bearer")

    async def _google_token(self, request: Request) -> Response:
        form = await request.form()
        grant = str(form.get("grant_type", ""))
        with self.lock:
            self.requests.append((request.url.path, grant))
        if grant != "refresh_token":
            return _error(400, "unsupported_grant_type", "Invalid grant_type")
        if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            return _error(401, "invalid_client", "The OAuth client was not found.")
        if not self.refresh_token or form.get("refresh_token") != self.refresh_token:
            return _error(400, "invalid_grant", "Token has been expired or revoked.")
        return self._issue(token_type="Bearer", scope=GOOGLE_SCOPE)

    def _issue(self, **extra: str) -> Response:
        token = (
            "ya29." + secrets.token_urlsafe(24)
            if "scope" in extra
            else "eyJ0eXAi." + secrets.token_urlsafe(24)
        )
        with self.lock:
            self.issued.append(token)
        return JSONResponse(
            {"access_token": token, "expires_in": self.expires_in, "ext_expires_in": self.expires_in, **extra}
        )


def _error(status: int, error: str, description: str) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=status)


__all__ = ["GOOGLE_SCOPE", "MICROSOFT_SCOPE", "FakeTokenEndpoint"]
