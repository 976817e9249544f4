//! Access tokens: claims, and forgeries that must fail.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::helpers::{SECRET, app_test, assert_unauthorized, claims_of};

fn header_of(token: &str) -> Value {
    let header = token.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap()
}

fn sign(claims: &Value, secret: &[u8], alg: Algorithm) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret)).unwrap()
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

app_test!(tokens_carry_the_documented_claims, |app| {
    let token = app.token_for("claims@example.com").await;
    assert_eq!(header_of(&token)["alg"], "HS256");
    let claims = claims_of(&token);
    let me: Value = app.get_auth("/auth/me", &token).await.json().await.unwrap();
    assert_eq!(claims["sub"], me["id"].to_string());
    assert_eq!(claims["role"], "user");
    assert_eq!(claims["iss"], "portcullis");
    assert_eq!(claims["aud"], "portcullis");
    assert!(claims["jti"].is_string());
    assert!(claims["sid"].is_string());
    let iat = claims["iat"].as_i64().unwrap();
    assert_eq!(claims["exp"].as_i64().unwrap() - iat, 15 * 60);
    assert!((chrono::Utc::now().timestamp() - iat).abs() < 60);
});

app_test!(forged_and_tampered_tokens_are_rejected, |app| {
    let token = app.token_for("victim@example.com").await;
    let claims = claims_of(&token);
    let mut escalated = claims.clone();
    escalated["role"] = json!("admin");
    let mut other_user = claims.clone();
    other_user["sub"] = json!("999");
    let parts: Vec<&str> = token.split('.').collect();

    let forgeries = vec![
        // alg none, with and without a signature.
        format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "JWT"})),
            parts[1]
        ),
        format!("{}.{}.{}", b64(&json!({"alg": "none"})), parts[1], parts[2]),
        // The payload changed under the original signature.
        format!("{}.{}.{}", parts[0], b64(&escalated), parts[2]),
        // Re-signed with a key that is not ours.
        sign(
            &escalated,
            b"an-attacker-key-that-is-long-enough!!",
            Algorithm::HS256,
        ),
        // Our key, but another algorithm than the pinned one.
        sign(&claims, SECRET.as_bytes(), Algorithm::HS512),
        // Our key, wrong issuer or audience.
        sign(
            &{
                let mut c = claims.clone();
                c["iss"] = json!("evil");
                c
            },
            SECRET.as_bytes(),
            Algorithm::HS256,
        ),
        sign(
            &{
                let mut c = claims.clone();
                c["aud"] = json!("other");
                c
            },
            SECRET.as_bytes(),
            Algorithm::HS256,
        ),
        // Our key, a user the session does not belong to.
        sign(&other_user, SECRET.as_bytes(), Algorithm::HS256),
        // Our key, expired beyond the leeway.
        sign(
            &{
                let mut c = claims.clone();
                c["exp"] = json!(chrono::Utc::now().timestamp() - 120);
                c
            },
            SECRET.as_bytes(),
            Algorithm::HS256,
        ),
        // Truncated.
        token[..token.len() - 5].to_owned(),
    ];
    for forged in forgeries {
        let response = app.get_auth("/protected/user", &forged).await;
        assert_unauthorized(response, "Could not validate credentials").await;
    }
    // The genuine token still works, so the rejections above were about the forgeries.
    assert_eq!(app.get_auth("/protected/user", &token).await.status(), 200);
});

app_test!(a_token_expired_within_the_leeway_is_still_accepted, |app| {
    let token = app.token_for("skew@example.com").await;
    let mut claims = claims_of(&token);
    claims["exp"] = json!(chrono::Utc::now().timestamp() - 10);
    let skewed = sign(&claims, SECRET.as_bytes(), jsonwebtoken::Algorithm::HS256);
    assert_eq!(app.get_auth("/protected/user", &skewed).await.status(), 200);
});

app_test!(register_login_and_access_end_to_end, |app| {
    let tokens = app.signed_up("e2e@example.com").await;
    let access = tokens["access_token"].as_str().unwrap();
    let me: Value = app.get_auth("/auth/me", access).await.json().await.unwrap();
    assert_eq!(me["email"], "e2e@example.com");
    let protected: Value = app
        .get_auth("/protected/user", access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(protected["user_id"], me["id"]);
});
