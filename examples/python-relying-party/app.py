"""An application that signs its users in with Portcullis ("Sign in with Portcullis").

Authlib's Starlette client does the OpenID Connect work: discovery, the authorization code
flow with PKCE (S256) and a nonce, the ID token's checks (signature against the JWKS, iss, aud,
exp, nonce, at_hash), userinfo, refresh and RP-initiated logout. Each page shows what happened
as JSON in a <pre id="result">.

Configuration (environment): PORTCULLIS_ISSUER, CLIENT_ID, CLIENT_SECRET, PORT (9100),
BASE_URL (this application's own address, http://127.0.0.1:PORT by default) and
SESSION_SECRET (signs the session cookie; random at each start by default).

A demonstration: /refresh, /revoke and /logout change things on a plain GET so that a link or
a test can reach them; a real application would make them POST forms with CSRF protection.
"""

import html
import json
import os
import secrets

from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.integrations.starlette_client import OAuth, OAuthError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.responses import HTMLResponse
from starlette.routing import Route

ISSUER = os.environ["PORTCULLIS_ISSUER"].rstrip("/")
CLIENT_ID = os.environ["CLIENT_ID"]
CLIENT_SECRET = os.environ["CLIENT_SECRET"]
PORT = int(os.environ.get("PORT", "9100"))
BASE_URL = os.environ.get("BASE_URL", f"http://127.0.0.1:{PORT}").rstrip("/")
# Signs the session cookie; a fresh one at each start signs everybody out.
SESSION_SECRET = os.environ.get("SESSION_SECRET") or secrets.token_hex(32)

# The tokens stay on the server: the session cookie (signed, not encrypted) holds only a key
# to them. A real application would keep them in its database or cache.
TOKENS: dict[str, dict] = {}


async def update_token(token, refresh_token=None, access_token=None):
    """Authlib refreshed an expired access token by itself: keep the new set, since the
    refresh token it spent is no good any more (Portcullis rotates them)."""
    for key, kept in TOKENS.items():
        if refresh_token and kept.get("refresh_token") == refresh_token:
            TOKENS[key] = {**kept, **token}


oauth = OAuth()
oauth.register(
    "portcullis",
    client_id=CLIENT_ID,
    client_secret=CLIENT_SECRET,
    server_metadata_url=f"{ISSUER}/.well-known/openid-configuration",
    client_kwargs={
        "scope": "openid email profile offline_access",
        "code_challenge_method": "S256",
    },
    update_token=update_token,
)
portcullis = oauth.portcullis


def page(title: str, result: dict, status: int = 200) -> HTMLResponse:
    """A small page: links to the other routes, and `result` as JSON."""
    body = html.escape(json.dumps(result, indent=2, sort_keys=True))
    links = " | ".join(
        f'<a href="/{route}">{route}</a>'
        for route in ("login", "me", "refresh", "revoke", "logout")
    )
    return HTMLResponse(
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title></head><body><main>"
        f"<h1>{html.escape(title)}</h1><nav>{links}</nav>"
        f'<pre id="result">{body}</pre></main></body></html>',
        status_code=status,
    )


def tokens_of(request) -> dict | None:
    return TOKENS.get(request.session.get("key", ""))


def keep(request, token: dict) -> None:
    key = request.session.setdefault("key", secrets.token_urlsafe(16))
    TOKENS[key] = dict(token)


def not_signed_in() -> HTMLResponse:
    return page("Not signed in", {"error": "not signed in: open /login"}, 401)


def failure(title: str, error: OAuthError) -> HTMLResponse:
    return page(title, {"error": error.error, "error_description": error.description}, 400)


async def home(request):
    return page("Relying party", {"issuer": ISSUER, "signed_in": tokens_of(request) is not None})


async def login(request):
    # Authlib adds state, nonce and the PKCE challenge, and keeps them in the session.
    return await portcullis.authorize_redirect(request, f"{BASE_URL}/callback")


async def callback(request):
    try:
        # The code for tokens (with the PKCE verifier), then the ID token's checks.
        token = await portcullis.authorize_access_token(request)
    except OAuthError as error:
        return failure("Sign-in failed", error)
    claims = token.pop("userinfo", None)
    if claims is None:
        return page("Sign-in failed", {"error": "no ID token"}, 400)
    keep(request, token)
    userinfo = await portcullis.userinfo(token=token)
    return page(
        "Signed in",
        {"id_token_claims": dict(claims), "userinfo": dict(userinfo), "scope": token["scope"]},
    )


async def me(request):
    token = tokens_of(request)
    if token is None:
        return not_signed_in()
    metadata = await portcullis.load_server_metadata()
    answer = await portcullis.get(metadata["userinfo_endpoint"], token=token)
    if answer.status_code != 200:
        return page("Userinfo refused", {"userinfo_status": answer.status_code}, 502)
    return page("Userinfo", {"userinfo": answer.json()})


async def refresh(request):
    token = tokens_of(request)
    if token is None:
        return not_signed_in()
    try:
        new = await portcullis.fetch_access_token(
            grant_type="refresh_token", refresh_token=token["refresh_token"]
        )
    except OAuthError as error:
        return failure("Refresh failed", error)
    # Portcullis rotates refresh tokens: the old one is spent now.
    rotated = new.get("refresh_token") not in (None, token["refresh_token"])
    # The ID token of the sign-in stays unless a new one came: it is the logout's hint.
    keep(request, {**token, **new})
    return page(
        "Refreshed",
        {
            "scope": new["scope"],
            "expires_in": new.get("expires_in"),
            "refresh_token_changed": rotated,
        },
    )


async def revoke(request):
    token = tokens_of(request)
    if token is None:
        return not_signed_in()
    metadata = await portcullis.load_server_metadata()
    # RFC 7009, with the client's credentials (HTTP Basic).
    async with AsyncOAuth2Client(CLIENT_ID, CLIENT_SECRET) as client:
        answer = await client.revoke_token(
            metadata["revocation_endpoint"],
            token=token["refresh_token"],
            token_type_hint="refresh_token",
        )
    # Refreshing again must fail now.
    try:
        await portcullis.fetch_access_token(
            grant_type="refresh_token", refresh_token=token["refresh_token"]
        )
        refresh_after = "accepted"
    except OAuthError as error:
        refresh_after = error.error
    return page(
        "Revoked",
        {"revocation_status": answer.status_code, "refresh_after_revocation": refresh_after},
    )


async def logout(request):
    token = TOKENS.pop(request.session.get("key", ""), None)
    request.session.clear()
    # RP-initiated logout: Authlib adds a state and keeps it in the session for /signed-out.
    return await portcullis.logout_redirect(
        request,
        post_logout_redirect_uri=f"{BASE_URL}/signed-out",
        id_token_hint=token["id_token"] if token else None,
        client_id=CLIENT_ID,
    )


async def signed_out(request):
    try:
        await portcullis.validate_logout_response(request)
    except OAuthError as error:
        return failure("Sign-out not confirmed", error)
    return page("Signed out", {"signed_out": True, "state": request.query_params["state"]})


app = Starlette(
    routes=[
        Route("/", home),
        Route("/login", login),
        Route("/callback", callback),
        Route("/me", me),
        Route("/refresh", refresh),
        Route("/revoke", revoke),
        Route("/logout", logout),
        Route("/signed-out", signed_out),
    ],
    middleware=[Middleware(SessionMiddleware, secret_key=SESSION_SECRET)],
)

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=PORT)
