"""A FastAPI service that trusts Portcullis access tokens, verified against its JWKS.

Settings (environment):
  PORTCULLIS_ISSUER     Portcullis's base URL; its discovery document names the JWKS and the
                        issuer that tokens carry in `iss`.
  PORTCULLIS_AUDIENCE   the `aud` a token must carry (Portcullis's `jwt_audience`).
  JWKS_CACHE_SECONDS    how long the key set is kept (default 300); a token naming an unknown
                        key fetches it again at once, so a rotation is followed without a
                        restart, and a retired key is refused once this has passed.

Run: uvicorn app:app --port $PORT
"""

import json
import os
import urllib.request
from dataclasses import dataclass
from functools import lru_cache

import jwt
from fastapi import Depends, FastAPI, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

# The algorithms Portcullis signs with; never taken from the token itself.
ALGORITHMS = ["EdDSA", "ES256"]


@dataclass(frozen=True)
class Caller:
    user_id: str
    role: str


@lru_cache(maxsize=1)
def discovery() -> dict:
    base = os.environ["PORTCULLIS_ISSUER"].rstrip("/")
    with urllib.request.urlopen(f"{base}/.well-known/openid-configuration", timeout=5) as answer:
        return json.load(answer)


@lru_cache(maxsize=1)
def keys() -> jwt.PyJWKClient:
    return jwt.PyJWKClient(
        discovery()["jwks_uri"],
        cache_jwk_set=True,
        lifespan=float(os.environ.get("JWKS_CACHE_SECONDS", "300")),
        timeout=5,
    )


bearer = HTTPBearer(auto_error=False)


def caller(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Caller:
    """The verified caller, or 401: signature by a published key, `iss`, `aud` and `exp`."""
    refused = HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        "Could not validate credentials",
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )
    if credentials is None:
        raise refused
    try:
        key = keys().get_signing_key_from_jwt(credentials.credentials)
        claims = jwt.decode(
            credentials.credentials,
            key.key,
            algorithms=ALGORITHMS,
            audience=os.environ["PORTCULLIS_AUDIENCE"],
            issuer=discovery()["issuer"],
            options={"require": ["exp", "iat", "sub", "iss", "aud"]},
        )
    except (jwt.PyJWTError, jwt.PyJWKClientError):
        raise refused from None
    return Caller(user_id=str(claims["sub"]), role=str(claims.get("role", "user")))


def admin(who: Caller = Depends(caller)) -> Caller:
    if who.role != "admin":
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Insufficient privileges")
    return who


app = FastAPI(title="A service that trusts Portcullis")


@app.get("/me")
def me(who: Caller = Depends(caller)) -> dict:
    return {"user_id": who.user_id, "role": who.role}


@app.get("/admin")
def admin_only(who: Caller = Depends(admin)) -> dict:
    return {"user_id": who.user_id, "role": who.role}
