//! Access tokens as HS256 JWTs (RFC 7519), with the algorithm pinned.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::ports::{AccessClaims, TokenError, TokenIssuer};
use crate::domain::{BackendError, SessionId, UserId};

/// The shortest HMAC key accepted: 256 bits, the size of HS256's output.
pub const MIN_SECRET_BYTES: usize = 32;

/// [`TokenIssuer`] signing with HMAC-SHA256 and a shared secret.
pub struct JwtTokenIssuer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
}

/// The claims as they travel.
#[derive(Debug, Serialize, Deserialize)]
struct WireClaims {
    sub: String,
    role: String,
    sid: String,
    iat: i64,
    exp: i64,
    jti: String,
    iss: String,
    aud: String,
}

impl JwtTokenIssuer {
    /// # Errors
    /// When the secret is shorter than [`MIN_SECRET_BYTES`].
    pub fn hs256(secret: &[u8], issuer: &str, audience: &str) -> Result<Self, String> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "the signing secret must be at least {MIN_SECRET_BYTES} bytes"
            ));
        }
        // Only HS256 is accepted, whatever the token's header says: this is what stops `none`
        // and algorithm-confusion forgeries.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.required_spec_claims = ["sub", "iat", "exp", "iss", "aud"]
            .into_iter()
            .map(String::from)
            .collect::<HashSet<_>>();
        // Expiry is checked by the core against its Clock, with its configured leeway.
        validation.validate_exp = false;
        Ok(Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        })
    }
}

impl TokenIssuer for JwtTokenIssuer {
    fn issue(&self, claims: &AccessClaims) -> Result<String, TokenError> {
        let wire = WireClaims {
            sub: claims.user_id.to_string(),
            role: claims.role.as_str().to_owned(),
            sid: claims.session_id.to_string(),
            iat: claims.issued_at.timestamp(),
            exp: claims.expires_at.timestamp(),
            jti: claims.token_id.clone(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &wire, &self.encoding)
            .map_err(|err| TokenError::Backend(BackendError::unexpected(err)))
    }

    fn verify(&self, token: &str) -> Result<AccessClaims, TokenError> {
        let reject = |what: &str| TokenError::Rejected(what.to_owned());
        let data = jsonwebtoken::decode::<WireClaims>(token, &self.decoding, &self.validation)
            .map_err(|err| TokenError::Rejected(err.to_string()))?;
        let wire = data.claims;
        let timestamp = |secs| {
            DateTime::<Utc>::from_timestamp(secs, 0).ok_or_else(|| reject("time out of range"))
        };
        Ok(AccessClaims {
            user_id: UserId(wire.sub.parse().map_err(|_| reject("sub"))?),
            role: wire.role.parse().map_err(|_| reject("role"))?,
            session_id: SessionId(Uuid::parse_str(&wire.sid).map_err(|_| reject("sid"))?),
            issued_at: timestamp(wire.iat)?,
            expires_at: timestamp(wire.exp)?,
            token_id: wire.jti,
        })
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use chrono::TimeDelta;

    use super::*;
    use crate::domain::Role;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn issuer() -> JwtTokenIssuer {
        JwtTokenIssuer::hs256(SECRET, "portcullis", "portcullis-api").unwrap()
    }

    fn claims() -> AccessClaims {
        let now = DateTime::<Utc>::from_timestamp(Utc::now().timestamp(), 0).unwrap();
        AccessClaims {
            user_id: UserId(42),
            role: Role::Admin,
            session_id: SessionId::random(),
            issued_at: now,
            expires_at: now + TimeDelta::minutes(15),
            token_id: Uuid::new_v4().to_string(),
        }
    }

    fn b64(json: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(json.to_string())
    }

    #[test]
    fn issued_tokens_verify_to_the_same_claims_with_the_standard_names() {
        let c = claims();
        let token = issuer().issue(&c).unwrap();
        assert_eq!(issuer().verify(&token).unwrap(), c);
        let payload = token.split('.').nth(1).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(json["sub"], "42");
        assert_eq!(json["role"], "admin");
        assert_eq!(json["iss"], "portcullis");
        assert_eq!(json["aud"], "portcullis-api");
        assert_eq!(json["sid"], c.session_id.to_string());
        for claim in ["iat", "exp", "jti"] {
            assert!(json.get(claim).is_some(), "{claim} missing");
        }
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(JwtTokenIssuer::hs256(b"short", "i", "a").is_err());
    }

    #[test]
    fn tokens_of_another_key_issuer_or_audience_are_rejected() {
        let token = issuer().issue(&claims()).unwrap();
        for other in [
            JwtTokenIssuer::hs256(
                b"another-secret-another-secret-xx",
                "portcullis",
                "portcullis-api",
            ),
            JwtTokenIssuer::hs256(SECRET, "someone-else", "portcullis-api"),
            JwtTokenIssuer::hs256(SECRET, "portcullis", "another-api"),
        ] {
            assert!(matches!(
                other.unwrap().verify(&token),
                Err(TokenError::Rejected(_))
            ));
        }
    }

    #[test]
    fn alg_none_and_other_algorithms_are_rejected() {
        let token = issuer().issue(&claims()).unwrap();
        let payload = token.split('.').nth(1).unwrap();
        for alg in ["none", "None", "HS512", "RS256", "EdDSA"] {
            let header = b64(&serde_json::json!({"alg": alg, "typ": "JWT"}));
            for signature in ["", token.split('.').nth(2).unwrap()] {
                let forged = format!("{header}.{payload}.{signature}");
                assert!(
                    matches!(issuer().verify(&forged), Err(TokenError::Rejected(_))),
                    "alg {alg} accepted"
                );
            }
        }
    }

    #[test]
    fn a_tampered_payload_is_rejected() {
        let token = issuer().issue(&claims()).unwrap();
        let mut parts: Vec<String> = token.split('.').map(String::from).collect();
        let mut json: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
        json["role"] = "admin".into();
        json["sub"] = "1".into();
        parts[1] = b64(&json);
        assert!(matches!(
            issuer().verify(&parts.join(".")),
            Err(TokenError::Rejected(_))
        ));
    }

    #[test]
    fn garbage_is_rejected() {
        for garbage in ["", "a.b.c", "not a token", "....", "eyJ.eyJ.sig"] {
            assert!(matches!(
                issuer().verify(garbage),
                Err(TokenError::Rejected(_))
            ));
        }
    }
}
