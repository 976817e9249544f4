//! Signing keys: the JWKS and discovery documents, EdDSA, ES256 and RS256 tokens verified by a standard
//! library and by the example resource server, rotation and retirement through the CLI, the
//! switch from HS256, forgeries.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{JwkSet, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};

use crate::helpers::{
    PASSWORD, SECRET, TestApp, access_token, app_test, assert_unauthorized, keys_cli, run_cli,
};

/// EdDSA, keys reloaded every second, and room for the many logins of the polling below.
const EDDSA: &str = r#"{"jwt_algorithm": "EdDSA", "signing_key_refresh_seconds": 1,
    "login_limit_per_account": 1000, "login_limit_per_ip": 1000}"#;

fn overrides(json: &str) -> Value {
    serde_json::from_str(json).unwrap()
}

fn header(token: &str) -> Value {
    let part = token.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

fn kid(token: &str) -> String {
    header(token)["kid"].as_str().expect("kid").to_owned()
}

async fn jwks(app: &TestApp) -> JwkSet {
    serde_json::from_value(app.get_json("/.well-known/jwks.json").await).unwrap()
}

/// The JWKS route's `Cache-Control`.
async fn jwks_cache_control(app: &TestApp) -> String {
    let response = app
        .client
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    response.headers()["cache-control"]
        .to_str()
        .unwrap()
        .to_owned()
}

fn kids(set: &JwkSet) -> Vec<String> {
    set.keys
        .iter()
        .filter_map(|k| k.common.key_id.clone())
        .collect()
}

/// Verifies `token` as any library would: the key from the JWKS by `kid`, at its `alg`.
fn verify_with(set: &JwkSet, token: &str) -> Result<Value, jsonwebtoken::errors::Error> {
    let kid = kid(token);
    let jwk = set.find(&kid).expect("kid in the JWKS");
    let alg: Algorithm = jwk
        .common
        .key_algorithm
        .unwrap()
        .to_string()
        .parse()
        .unwrap();
    let mut validation = Validation::new(alg);
    validation.set_issuer(&["portcullis"]);
    validation.set_audience(&["portcullis"]);
    jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(jwk)?, &validation)
        .map(|d| d.claims)
}

fn listed(app: &TestApp) -> Vec<Value> {
    let out = keys_cli(app, &["keys", "list", "--json"]);
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Polls `check` for up to five seconds: instances pick up key changes on their refresh.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..50 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not happen within 5 s");
}

app_test!(
    hs256_publishes_no_key_and_the_discovery_documents_point_at_the_jwks,
    |app| {
        assert_eq!(jwks_cache_control(&app).await, "public, max-age=300");
        assert_eq!(
            app.get_json("/.well-known/jwks.json").await,
            json!({"keys": []})
        );
        let token = app.token_for("iss@example.com").await;
        assert!(
            header(&token).get("kid").is_none(),
            "HS256 tokens stay as pyauth's"
        );
        let payload: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        let base = app.address.clone();
        let mut documents = Vec::new();
        for path in [
            "/.well-known/oauth-authorization-server",
            "/.well-known/openid-configuration",
        ] {
            let response = app.client.get(app.url(path)).send().await.unwrap();
            assert_eq!(response.status(), 200, "{path}");
            documents.push(response.json::<Value>().await.unwrap());
        }
        assert_eq!(documents[0], documents[1]);
        let doc = &documents[0];
        assert_eq!(doc["issuer"], payload["iss"]);
        assert_eq!(doc["jwks_uri"], format!("{base}/.well-known/jwks.json"));
        assert_eq!(doc["token_endpoint"], format!("{base}/auth/token"));
        assert_eq!(
            doc["grant_types_supported"],
            json!(["password", "refresh_token"])
        );
        assert_eq!(
            doc["token_endpoint_auth_methods_supported"],
            json!(["none"])
        );
        assert_eq!(doc["response_types_supported"], json!(["token"]));
        assert_eq!(
            doc["id_token_signing_alg_values_supported"],
            json!(["HS256"])
        );
    }
);

app_test!(
    discovery_urls_come_from_public_url,
    json!({"public_url": "https://auth.example.com", "jwt_issuer": "https://auth.example.com", "jwt_algorithm": "ES256", "jwks_max_age": 60}),
    |app| {
        let doc: Value = app.get_json("/.well-known/openid-configuration").await;
        assert_eq!(doc["issuer"], "https://auth.example.com");
        assert_eq!(
            doc["jwks_uri"],
            "https://auth.example.com/.well-known/jwks.json"
        );
        assert_eq!(
            doc["id_token_signing_alg_values_supported"],
            json!(["ES256"])
        );
        assert_eq!(jwks_cache_control(&app).await, "public, max-age=60");
    }
);

/// `kind` is the member of the JWK that tells its type of key, with its value.
async fn asymmetric_tokens_verify_with_the_jwks(app: &TestApp, alg: &str, kind: (&str, &str)) {
    let tokens = app
        .signed_up(&format!("{}@example.com", alg.to_lowercase()))
        .await;
    let token = access_token(&tokens);
    assert_eq!(header(&token)["alg"], alg);
    let set = jwks(app).await;
    assert_eq!(kids(&set), [kid(&token)]);
    let raw: Value = app.get_json("/.well-known/jwks.json").await;
    let jwk = &raw["keys"][0];
    assert_eq!(
        (jwk["alg"].as_str(), jwk["use"].as_str()),
        (Some(alg), Some("sig"))
    );
    assert_eq!(jwk[kind.0], kind.1);
    assert!(
        jwk.get("d").is_none() && jwk.get("k").is_none(),
        "no private or HMAC key"
    );
    let claims = verify_with(&set, &token).expect("verifies with the JWKS");
    assert_eq!(claims["role"], "user");
    assert_eq!(app.get_auth("/protected/user", &token).await.status(), 200);
    // Refresh and /auth/token issue the same kind of token.
    let refreshed = app
        .post_json(
            "/auth/refresh",
            &json!({"refresh_token": tokens["refresh_token"]}),
        )
        .await;
    let refreshed = access_token(&refreshed.json().await.unwrap());
    assert_eq!(kid(&refreshed), kid(&token));
    verify_with(&set, &refreshed).unwrap();
}

app_test!(eddsa_tokens_verify_with_the_jwks, overrides(EDDSA), |app| {
    asymmetric_tokens_verify_with_the_jwks(&app, "EdDSA", ("crv", "Ed25519")).await;
    // The reloads are counted (every second here), for alerts on failed ones.
    eventually("a reload is counted", async || {
        let metrics = app.client.get(app.url("/metrics")).send().await.unwrap();
        let text = metrics.text().await.unwrap();
        text.contains("portcullis_signing_key_refreshes_total{outcome=\"ok\"}")
            && text.contains("portcullis_signing_keys_published")
    })
    .await;
});

app_test!(
    es256_tokens_verify_with_the_jwks,
    json!({"jwt_algorithm": "ES256"}),
    |app| {
        asymmetric_tokens_verify_with_the_jwks(&app, "ES256", ("crv", "P-256")).await;
    }
);

app_test!(
    rs256_tokens_verify_with_the_jwks,
    json!({"jwt_algorithm": "RS256"}),
    |app| {
        asymmetric_tokens_verify_with_the_jwks(&app, "RS256", ("kty", "RSA")).await;
        let set = jwks(&app).await;
        let [jwk] = set.keys.as_slice() else {
            panic!("one key expected: {:?}", kids(&set));
        };
        assert_eq!(
            jwk.common.key_id.as_deref(),
            Some(jwk.thumbprint(ThumbprintHash::SHA256).unwrap().as_str()),
            "kid is the RFC 7638 thumbprint"
        );
        let raw: Value = app.get_json("/.well-known/jwks.json").await;
        let n = URL_SAFE_NO_PAD
            .decode(raw["keys"][0]["n"].as_str().unwrap())
            .unwrap();
        assert_eq!(n.len() * 8, 2048);
        assert_eq!(raw["keys"][0]["e"], "AQAB");
    }
);

/// What a Python service does with the discovery document and PyJWT's `PyJWKClient`.
const PYJWT: &str = r#"
import json, sys, urllib.request
import jwt
base, token = sys.argv[1], sys.argv[2]
conf = json.load(urllib.request.urlopen(base + "/.well-known/openid-configuration"))
key = jwt.PyJWKClient(conf["jwks_uri"]).get_signing_key_from_jwt(token)
claims = jwt.decode(token, key.key, algorithms=[key.algorithm_name],
                    audience="portcullis", issuer=conf["issuer"])
print(key.algorithm_name, claims["sub"], claims["role"])
"#;

/// Verifies `token` with PyJWT; `None` when Python or PyJWT is missing on a laptop (`.ci/run`
/// installs them, and in CI their absence fails the test).
fn pyjwt(app: &TestApp, token: &str) -> Option<String> {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import jwt, cryptography"])
        .output();
    if !probe.is_ok_and(|out| out.status.success()) {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 with PyJWT and cryptography is needed in CI (.ci/run installs it)"
        );
        eprintln!("skipped: python3 with PyJWT is not installed");
        return None;
    }
    let out = std::process::Command::new("python3")
        .args(["-c", PYJWT, &app.address, token])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

app_test!(
    pyjwt_verifies_eddsa_and_es256_tokens_from_the_jwks,
    overrides(EDDSA),
    |app| {
        let eddsa = app.token_for("python@example.com").await;
        let Some(verified) = pyjwt(&app, &eddsa) else {
            return app;
        };
        let me: Value = app.get_auth("/auth/me", &eddsa).await.json().await.unwrap();
        assert_eq!(verified, format!("EdDSA {} user", me["id"]));
        let mut settings = app.settings.clone();
        settings.jwt_algorithm = portcullis::config::JwtAlgorithm::Es256;
        let mut es256 = TestApp::spawn(settings).await;
        let token = es256.token_for_existing("python@example.com").await;
        assert_eq!(
            pyjwt(&es256, &token).unwrap(),
            format!("ES256 {} user", me["id"])
        );
        es256.stop().await;
    }
);

app_test!(forged_tokens_are_refused, overrides(EDDSA), |app| {
    let token = app.token_for("forge@example.com").await;
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    let set = jwks(&app).await;
    let jwk = serde_json::to_string(&set.keys[0]).unwrap();
    let x = serde_json::from_str::<Value>(&jwk).unwrap()["x"]
        .as_str()
        .unwrap()
        .to_owned();
    let sign = |alg, kid: Option<String>, secret: &[u8]| {
        let mut header = Header::new(alg);
        header.kid = kid;
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret)).unwrap()
    };
    let forgeries = [
        // The public key as an HMAC secret, under the key's own kid: algorithm confusion.
        sign(Algorithm::HS256, Some(kid(&token)), jwk.as_bytes()),
        sign(Algorithm::HS256, Some(kid(&token)), x.as_bytes()),
        sign(
            Algorithm::HS256,
            Some(kid(&token)),
            &URL_SAFE_NO_PAD.decode(&x).unwrap(),
        ),
        // SECRET_KEY can no longer mint tokens once EdDSA signs.
        sign(Algorithm::HS256, None, SECRET.as_bytes()),
        sign(Algorithm::HS256, Some(kid(&token)), SECRET.as_bytes()),
        // alg none under the right kid.
        format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(json!({"alg": "none", "kid": kid(&token)}).to_string()),
            token.split('.').nth(1).unwrap()
        ),
        // A kid nobody made.
        sign(Algorithm::HS256, Some("made-up".into()), SECRET.as_bytes()),
    ];
    for forged in forgeries {
        assert_unauthorized(app.get_auth("/protected/user", &forged).await, "").await;
    }
    assert_eq!(app.get_auth("/protected/user", &token).await.status(), 200);
});

app_test!(migrate_makes_the_first_key_and_it_signs_at_once, |app| {
    let url = app.settings.database_url().to_owned();
    let out = run_cli(&url, &[("JWT_ALGORITHM", "ES256")], &["migrate"], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_cli(
        &url,
        &[("JWT_ALGORITHM", "ES256")],
        &["keys", "list", "--json"],
        "",
    );
    let keys: Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys = keys.as_array().unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(keys[0]["state"], "current");
    assert_eq!(keys[0]["algorithm"], "ES256");
    assert_eq!(keys[0]["created_at"], keys[0]["activates_at"]);
    // Another run makes no second key.
    run_cli(&url, &[("JWT_ALGORITHM", "ES256")], &["migrate"], "");
    let out = run_cli(
        &url,
        &[("JWT_ALGORITHM", "ES256")],
        &["keys", "list", "--json"],
        "",
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
});

app_test!(
    rotation_and_retirement_through_the_cli,
    overrides(EDDSA),
    |app| {
        let first = app.token_for("rotate@example.com").await;
        let first_kid = kid(&first);

        // A scheduled rotation publishes the new key and keeps signing with the old one.
        let out = keys_cli(&app, &["keys", "rotate"]);
        assert!(String::from_utf8_lossy(&out.stdout).contains("signs from"));
        eventually("the next key is published", async || {
            jwks(&app).await.keys.len() == 2
        })
        .await;
        let during = app.token_for_existing("rotate@example.com").await;
        assert_eq!(kid(&during), first_kid);
        let keys = listed(&app);
        let states: Vec<&str> = keys.iter().map(|k| k["state"].as_str().unwrap()).collect();
        assert_eq!(states, ["current", "next"]);

        // --now: the published next key signs at once, with a warning on stderr.
        let out = keys_cli(&app, &["keys", "rotate", "--now"]);
        assert!(String::from_utf8_lossy(&out.stderr).contains("warning"));
        let second_kid = keys[1]["kid"].as_str().unwrap().to_owned();
        eventually("the new key signs", async || {
            kid(&app.token_for_existing("rotate@example.com").await) == second_kid
        })
        .await;
        let second = app.token_for_existing("rotate@example.com").await;
        // Old tokens still verify, by Portcullis and by the JWKS.
        assert_eq!(app.get_auth("/protected/user", &first).await.status(), 200);
        let set = jwks(&app).await;
        verify_with(&set, &first).unwrap();
        verify_with(&set, &second).unwrap();
        let states: Vec<String> = listed(&app)
            .iter()
            .map(|k| k["state"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(states, ["previous", "current"]);

        // Emergency retirement: the old key's tokens are refused within the refresh interval.
        let out = keys_cli(&app, &["keys", "retire", &first_kid]);
        assert!(String::from_utf8_lossy(&out.stdout).contains("retired"));
        eventually("the retired key's tokens are refused", async || {
            app.get_auth("/protected/user", &first).await.status() == 401
        })
        .await;
        assert_eq!(app.get_auth("/protected/user", &second).await.status(), 200);
        assert_eq!(kids(&jwks(&app).await), std::slice::from_ref(&second_kid));
        let trail = keys_cli(&app, &["audit", "--kind", "key.retired", "--json"]);
        let events: Value = serde_json::from_slice(&trail.stdout).unwrap();
        assert_eq!(events[0]["detail"]["kid"], first_kid.as_str());
        assert_eq!(events[0]["detail"]["was"], "previous");
        let trail = keys_cli(&app, &["audit", "--kind", "key.published", "--json"]);
        let published: Value = serde_json::from_slice(&trail.stdout).unwrap();
        assert_eq!(published.as_array().unwrap().len(), 3, "{published}");

        // Retiring the signing key puts a fresh one in its place.
        let out = keys_cli(&app, &["keys", "retire", &second_kid]);
        assert!(String::from_utf8_lossy(&out.stderr).contains("signs in its place"));
        eventually("a fresh key signs", async || {
            let token = app.token_for_existing("rotate@example.com").await;
            kid(&token) != second_kid
                && app.get_auth("/protected/user", &token).await.status() == 200
        })
        .await;
        eventually("the second key's tokens are refused", async || {
            app.get_auth("/protected/user", &second).await.status() == 401
        })
        .await;
        let unknown = run_cli(
            app.settings.database_url(),
            &[],
            &["keys", "retire", "no-such-kid"],
            "",
        );
        assert!(!unknown.status.success());
        assert!(String::from_utf8_lossy(&unknown.stderr).contains("no signing key"));
    }
);

app_test!(switching_from_hs256_logs_nobody_out, |app| {
    let tokens = app.signed_up("switch@example.com").await;
    let old = access_token(&tokens);
    // `iat` counts whole seconds: a token from the switch's own second is refused (its
    // client refreshes), so switch in the next one.
    tokio::time::sleep(Duration::from_millis(1001)).await;
    // The same database and SECRET_KEY, now configured for EdDSA.
    let mut settings = app.settings.clone();
    settings.jwt_algorithm = portcullis::config::JwtAlgorithm::EdDsa;
    let mut eddsa = TestApp::spawn(settings).await;
    // The HS256 token from before the switch still works, and its refresh brings EdDSA.
    assert_eq!(eddsa.get_auth("/protected/user", &old).await.status(), 200);
    let refreshed = eddsa
        .post_json(
            "/auth/refresh",
            &json!({"refresh_token": tokens["refresh_token"]}),
        )
        .await;
    assert_eq!(refreshed.status(), 200);
    let new = access_token(&refreshed.json().await.unwrap());
    assert_eq!(header(&new)["alg"], "EdDSA");
    assert_eq!(eddsa.get_auth("/protected/user", &new).await.status(), 200);
    // SECRET_KEY mints nothing accepted any more: an HS256 token issued now is refused.
    let login = eddsa.login("switch@example.com", PASSWORD).await;
    let mut claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(
                access_token(&login.json().await.unwrap())
                    .split('.')
                    .nth(1)
                    .unwrap(),
            )
            .unwrap(),
    )
    .unwrap();
    claims["role"] = "admin".into();
    let minted = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert_unauthorized(eddsa.get_auth("/protected/user", &minted).await, "").await;
    eddsa.stop().await;
});

app_test!(
    two_instances_share_one_key_set_and_see_each_others_rotations,
    overrides(EDDSA),
    |app| {
        let mut other = TestApp::spawn(app.settings.clone()).await;
        assert_eq!(kids(&jwks(&app).await), kids(&jwks(&other).await));
        let token = app.token_for("fleet@example.com").await;
        assert_eq!(
            other.get_auth("/protected/user", &token).await.status(),
            200
        );
        keys_cli(&app, &["keys", "rotate", "--now"]);
        eventually("both instances publish the same two keys", async || {
            let (a, b) = (kids(&jwks(&app).await), kids(&jwks(&other).await));
            a.len() == 2 && a == b
        })
        .await;
        let fresh = other.token_for_existing("fleet@example.com").await;
        assert_ne!(kid(&fresh), kid(&token));
        assert_eq!(app.get_auth("/protected/user", &fresh).await.status(), 200);
        assert_eq!(app.get_auth("/protected/user", &token).await.status(), 200);
        other.stop().await;
    }
);

app_test!(
    a_token_naming_a_kid_made_elsewhere_is_accepted_on_its_first_request,
    overrides(EDDSA),
    |app| {
        // Neither instance would reload on its own for an hour.
        let mut slow = app.settings.clone();
        slow.signing_key_refresh_seconds = 3600;
        let mut first = TestApp::spawn(slow.clone()).await;
        let mut other = TestApp::spawn(slow).await;
        let token = first.token_for("unknown-kid@example.com").await;
        keys_cli(&first, &["keys", "rotate", "--now"]);
        // Once the command returned, no instance signs with the old key any more.
        let fresh = first.token_for_existing("unknown-kid@example.com").await;
        assert_ne!(kid(&fresh), kid(&token));
        // The other instance reloads on the unknown kid and judges the same request again:
        // its very first answer is the right one (SQLite announces nothing; on PostgreSQL the
        // announcement may or may not have arrived yet).
        assert_eq!(
            other.get_auth("/protected/user", &fresh).await.status(),
            200
        );
        assert_eq!(other.get_auth("/auth/me", &token).await.status(), 200);
        // A made-up kid is refused after the (paced) reload.
        let mut forged: Vec<&str> = fresh.split('.').collect();
        let made_up = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&json!({"alg": "EdDSA", "typ": "JWT", "kid": "made-up"})).unwrap(),
        );
        forged[0] = &made_up;
        assert_unauthorized(other.get_auth("/auth/me", &forged.join(".")).await, "").await;
        first.stop().await;
        other.stop().await;
    }
);

app_test!(
    once_keys_retire_returns_no_instance_signs_with_the_key,
    overrides(EDDSA),
    |app| {
        let mut slow = app.settings.clone();
        slow.signing_key_refresh_seconds = 3600;
        let mut a = TestApp::spawn(slow.clone()).await;
        let mut b = TestApp::spawn(slow).await;
        let old_a = a.token_for("retire-a@example.com").await;
        let old_b = b.token_for("retire-b@example.com").await;
        let retired = kid(&old_a);
        assert_eq!(kid(&old_b), retired);
        keys_cli(&a, &["keys", "retire", &retired]);
        // At once, on every instance and both databases: the next token is signed by the key
        // that replaced it.
        for (app, email) in [(&a, "retire-a@example.com"), (&b, "retire-b@example.com")] {
            let fresh = app.token_for_existing(email).await;
            assert_ne!(kid(&fresh), retired);
            assert_eq!(app.get_auth("/protected/user", &fresh).await.status(), 200);
        }
        // On PostgreSQL every instance hears of it from the database: within a second the
        // retired key's tokens are refused and it is no longer published, though neither
        // instance would refresh on its own for an hour. (On SQLite the instances just took
        // the table in before signing, above.)
        if app.settings.database_url().starts_with("postgres") {
            for (instance, old) in [(&a, &old_a), (&b, &old_b)] {
                let started = std::time::Instant::now();
                loop {
                    let refused = instance.get_auth("/protected/user", old).await.status() == 401;
                    let unpublished = !kids(&jwks(instance).await).contains(&retired);
                    if refused && unpublished {
                        break;
                    }
                    assert!(
                        started.elapsed() < Duration::from_secs(1),
                        "the retired key still works or is published after a second"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        a.stop().await;
        b.stop().await;
    }
);

/// The example resource server, started on a free port and stopped when dropped.
struct ResourceServer {
    child: Child,
    address: String,
}

impl ResourceServer {
    fn start(app: &TestApp) -> Self {
        // `cargo test` builds the examples next to the test binaries' folder.
        let exe = std::env::current_exe().unwrap();
        let path = exe
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("examples/resource_server");
        assert!(
            path.exists(),
            "{} is missing: run `cargo test` (which builds the examples), or `cargo build --example resource_server`",
            path.display()
        );
        let mut child = Command::new(path)
            .env("JWKS_URL", app.url("/.well-known/jwks.json"))
            .env("TOKEN_ISSUER", "portcullis")
            .env("TOKEN_AUDIENCE", "portcullis")
            .env("JWKS_MIN_REFETCH_SECONDS", "1")
            .env("PORT", "0")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the example");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address = line
            .trim()
            .strip_prefix("listening on ")
            .expect("address line")
            .to_owned();
        Self { child, address }
    }

    async fn hello(&self, token: &str) -> reqwest::Response {
        reqwest::Client::new()
            .get(format!("{}/hello", self.address))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }
}

impl Drop for ResourceServer {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

app_test!(
    the_example_resource_server_verifies_from_the_jwks_alone,
    overrides(EDDSA),
    |app| {
        let server = ResourceServer::start(&app);
        let token = app.token_for("resource@example.com").await;
        let response = server.hello(&token).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["role"], "user");
        assert_eq!(body["kid"], kid(&token));
        let mut tampered = token.clone();
        tampered.pop();
        tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(server.hello(&tampered).await.status(), 401);
        let hs256 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "1", "role": "admin", "iss": "portcullis", "aud": "portcullis", "exp": 4_000_000_000u64}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
        assert_eq!(server.hello(&hs256).await.status(), 401);

        // A key that signs at once is unknown to its cache: it refetches and accepts the token.
        keys_cli(&app, &["keys", "rotate", "--now"]);
        let mut fresh = token.clone();
        eventually("Portcullis signs with the new key", async || {
            fresh = app.token_for_existing("resource@example.com").await;
            kid(&fresh) != kid(&token)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let response = server.hello(&fresh).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.json::<Value>().await.unwrap()["kid"], kid(&fresh));
        assert_eq!(
            server.hello(&token).await.status(),
            200,
            "the previous key stays published"
        );
    }
);
