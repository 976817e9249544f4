// An Express service that trusts Portcullis access tokens, verified against its JWKS.
//
// Settings (environment):
//   PORTCULLIS_ISSUER    Portcullis's base URL; its discovery document names the JWKS and the
//                        issuer that tokens carry in `iss`.
//   PORTCULLIS_AUDIENCE  the `aud` a token must carry (Portcullis's `jwt_audience`).
//   PORT                 where to listen.
//   JWKS_CACHE_SECONDS   how long the key set is kept (default 300); a token naming an unknown
//                        key fetches it again, so a rotation is followed without a restart, and
//                        a retired key is refused once this has passed.
import express from "express";
import { createRemoteJWKSet, jwtVerify } from "jose";

const base = process.env.PORTCULLIS_ISSUER.replace(/\/+$/, "");
const audience = process.env.PORTCULLIS_AUDIENCE;
const cacheSeconds = Number(process.env.JWKS_CACHE_SECONDS ?? "300");
// The algorithms Portcullis signs with; never taken from the token itself.
const algorithms = ["EdDSA", "ES256"];

const discovery = await (await fetch(`${base}/.well-known/openid-configuration`)).json();
const keys = createRemoteJWKSet(new URL(discovery.jwks_uri), {
  cacheMaxAge: cacheSeconds * 1000,
  // An unknown kid may refetch the set this soon after the last fetch.
  cooldownDuration: Math.min(cacheSeconds, 30) * 1000,
});

// The verified caller on req.caller, or 401: signature by a published key, iss, aud, exp.
export async function portcullis(req, res, next) {
  const [scheme, token] = (req.get("authorization") ?? "").split(" ");
  if (scheme?.toLowerCase() !== "bearer" || !token) {
    return refuse(res);
  }
  try {
    const { payload } = await jwtVerify(token, keys, {
      issuer: discovery.issuer,
      audience,
      algorithms,
      requiredClaims: ["exp", "iat", "sub"],
    });
    req.caller = { user_id: String(payload.sub), role: String(payload.role ?? "user") };
    return next();
  } catch {
    return refuse(res);
  }
}

function refuse(res) {
  res.set("WWW-Authenticate", 'Bearer error="invalid_token"');
  return res.status(401).json({ detail: "Could not validate credentials" });
}

function adminOnly(req, res, next) {
  if (req.caller.role !== "admin") {
    return res.status(403).json({ detail: "Insufficient privileges" });
  }
  return next();
}

const app = express();
app.get("/me", portcullis, (req, res) => res.json(req.caller));
app.get("/admin", portcullis, adminOnly, (req, res) => res.json(req.caller));
const port = Number(process.env.PORT ?? "9000");
app.listen(port, "127.0.0.1", () => console.log(`listening on http://127.0.0.1:${port}`));
