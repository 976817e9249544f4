//! A resource server that accepts Portcullis access tokens knowing only the JWKS URL: no
//! secret, no database, no call to Portcullis per request.
//!
//! ```sh
//! JWKS_URL=http://127.0.0.1:8000/.well-known/jwks.json TOKEN_ISSUER=portcullis \
//! TOKEN_AUDIENCE=portcullis PORT=3000 cargo run --example resource_server
//! curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:3000/hello
//! ```
//!
//! What it shows:
//! - the key set is fetched once and cached for the `max-age` Portcullis sends;
//! - a token naming a `kid` the cache lacks makes it fetch again (a key that signs at once
//!   after `portcullis keys rotate --now`), but at most once per `JWKS_MIN_REFETCH_SECONDS`,
//!   so tokens with made-up `kid`s cannot turn it into a load generator against Portcullis;
//! - each key verifies only at its own `alg`, with `iss`, `aud` and `exp` checked.
//!
//! Portcullis checks on every request that the session is still open; a resource server that
//! verifies tokens alone accepts a token until it expires (15 minutes by default), even after a
//! logout. Keep access tokens short-lived if that matters to you.
//!
//! For an `https://` JWKS URL, enable a TLS feature of reqwest (e.g. `rustls`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use poem::http::StatusCode;
use poem::listener::{Acceptor as _, Listener as _, TcpListener};
use poem::web::{Data, Json};
use poem::{EndpointExt as _, Request, Route, get, handler};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Mutex;

/// The key set as last fetched.
struct Cache {
    keys: HashMap<String, (DecodingKey, Algorithm)>,
    fetched_at: Option<Instant>,
    max_age: Duration,
}

struct Keys {
    jwks_url: String,
    min_refetch: Duration,
    http: reqwest::Client,
    cache: Mutex<Cache>,
}

impl Keys {
    /// The key `kid` names, fetching the set again when the cache is stale or lacks it (and the
    /// last fetch is old enough).
    async fn find(&self, kid: &str) -> Option<(DecodingKey, Algorithm)> {
        let mut cache = self.cache.lock().await;
        let age = cache.fetched_at.map(|at| at.elapsed());
        let stale = age.is_none_or(|age| age >= cache.max_age);
        let may_refetch = age.is_none_or(|age| age >= self.min_refetch);
        if stale || (!cache.keys.contains_key(kid) && may_refetch) {
            match self.fetch().await {
                Ok((keys, max_age)) => {
                    *cache = Cache {
                        keys,
                        fetched_at: Some(Instant::now()),
                        max_age,
                    };
                }
                Err(err) => eprintln!("JWKS fetch failed, keeping the cached keys: {err}"),
            }
        }
        cache.keys.get(kid).cloned()
    }

    async fn fetch(
        &self,
    ) -> Result<(HashMap<String, (DecodingKey, Algorithm)>, Duration), Box<dyn std::error::Error>>
    {
        let response = self
            .http
            .get(&self.jwks_url)
            .send()
            .await?
            .error_for_status()?;
        let max_age = response
            .headers()
            .get("cache-control")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                value
                    .split(',')
                    .find_map(|part| part.trim().strip_prefix("max-age="))
                    .and_then(|secs| secs.parse().ok())
            })
            .map_or(Duration::from_secs(300), Duration::from_secs);
        let set: JwkSet = response.json().await?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            // A key without a kid or an alg cannot be matched safely: skip it.
            let (Some(kid), Some(alg)) = (&jwk.common.key_id, jwk.common.key_algorithm) else {
                continue;
            };
            let Ok(alg) = alg.to_string().parse::<Algorithm>() else {
                continue;
            };
            keys.insert(kid.clone(), (DecodingKey::from_jwk(jwk)?, alg));
        }
        Ok((keys, max_age))
    }
}

struct Verifier {
    keys: Keys,
    issuer: String,
    audience: String,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    role: String,
}

fn unauthorized(why: &str) -> poem::Error {
    let mut error = poem::Error::from_string(
        json!({ "detail": "Could not validate credentials", "reason": why }).to_string(),
        StatusCode::UNAUTHORIZED,
    );
    error.set_error_message("Could not validate credentials");
    error
}

impl Verifier {
    async fn verify(&self, request: &Request) -> poem::Result<(Claims, String)> {
        let token = request
            .header("authorization")
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| unauthorized("no bearer token"))?;
        let header = jsonwebtoken::decode_header(token).map_err(|_| unauthorized("malformed"))?;
        let kid = header.kid.ok_or_else(|| unauthorized("no kid"))?;
        let (key, alg) = self
            .keys
            .find(&kid)
            .await
            .ok_or_else(|| unauthorized("unknown kid"))?;
        // The key's own algorithm only: a token whose header names another is refused.
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(|_| unauthorized("invalid token"))?;
        Ok((data.claims, kid))
    }
}

#[handler]
async fn hello(
    request: &Request,
    verifier: Data<&Arc<Verifier>>,
) -> poem::Result<Json<serde_json::Value>> {
    let (claims, kid) = verifier.verify(request).await?;
    Ok(Json(
        json!({ "sub": claims.sub, "role": claims.role, "kid": kid }),
    ))
}

fn env(name: &str, default: Option<&str>) -> String {
    std::env::var(name)
        .ok()
        .or(default.map(String::from))
        .unwrap_or_else(|| panic!("set {name}"))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let verifier = Arc::new(Verifier {
        keys: Keys {
            jwks_url: env("JWKS_URL", None),
            min_refetch: Duration::from_secs(
                env("JWKS_MIN_REFETCH_SECONDS", Some("10"))
                    .parse()
                    .expect("JWKS_MIN_REFETCH_SECONDS is a number"),
            ),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("HTTP client"),
            cache: Mutex::new(Cache {
                keys: HashMap::new(),
                fetched_at: None,
                max_age: Duration::ZERO,
            }),
        },
        issuer: env("TOKEN_ISSUER", Some("portcullis")),
        audience: env("TOKEN_AUDIENCE", Some("portcullis")),
    });
    let port = env("PORT", Some("3000"));
    let acceptor = TcpListener::bind(format!("127.0.0.1:{port}"))
        .into_acceptor()
        .await?;
    // The bound address on stdout, so that a caller that asked for port 0 can find it.
    if let Some(address) = acceptor
        .local_addr()
        .first()
        .and_then(|a| a.as_socket_addr().copied())
    {
        println!("listening on http://{address}");
    }
    let app = Route::new().at("/hello", get(hello)).data(verifier);
    poem::Server::new_with_acceptor(acceptor).run(app).await
}
