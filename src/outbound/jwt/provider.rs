//! [`ProviderTokens`]: the tokens of the OpenID provider's relying parties, signed and checked
//! with the installed asymmetric keys, as Portcullis's own are. Access tokens for clients follow
//! RFC 9068 and ID tokens OpenID Connect Core. HS256 never signs or verifies them: a relying
//! party does not hold the shared secret.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use jsonwebtoken::Header;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256, Sha512};
use uuid::Uuid;

use super::{JwtTokenIssuer, read_header, rejected, timestamp};
use crate::domain::oauth::{ClientId, Scopes};
use crate::domain::ports::{
    ClientAccessClaims, IdClaims, IdTokenHint, ProviderTokens, TokenError, TokenSubject,
};
use crate::domain::{BackendError, KeyAlgorithm, SessionId, UserId};

/// The `typ` of a client's access token (RFC 9068, section 2.1).
const CLIENT_ACCESS: &str = "at+jwt";

/// Whether a header's `typ` marks a client's access token. Media types ignore case, and
/// RFC 7515 (section 4.1.9) lets the `application/` prefix be left out.
pub(super) fn is_client_access(typ: &str) -> bool {
    typ.eq_ignore_ascii_case(CLIENT_ACCESS) || typ.eq_ignore_ascii_case("application/at+jwt")
}

/// The claims of a client's access token as they travel (RFC 9068, section 2.2).
#[derive(Serialize, Deserialize)]
struct ClientAccessWire {
    iss: String,
    sub: String,
    /// The client, as a string: a resource server of the client's checks it against
    /// `client_id`.
    aud: String,
    client_id: String,
    scope: String,
    exp: i64,
    iat: i64,
    jti: String,
    /// The user's session with the client; a token of the client itself has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    sid: Option<String>,
}

/// The claims of an ID token as they travel (OpenID Connect Core, section 2).
#[derive(Serialize)]
struct IdTokenWire<'a> {
    iss: &'a str,
    sub: String,
    aud: [&'a str; 1],
    azp: &'a str,
    exp: i64,
    iat: i64,
    auth_time: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<&'a str>,
    amr: Vec<&'static str>,
    sid: String,
    at_hash: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email_verified: Option<bool>,
}

/// What an ID token presented back as a hint must carry.
#[derive(Deserialize)]
struct IdTokenHintWire {
    sub: String,
    aud: Audience,
    azp: String,
    /// Only ID tokens carry it (with `azp`): it tells them from the other tokens the same keys
    /// sign. Its value is not needed.
    #[serde(rename = "auth_time")]
    _auth_time: IgnoredAny,
}

/// `aud`, which RFC 7519 lets be one string or an array of them.
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, audience: &str) -> bool {
        match self {
            Self::One(one) => one == audience,
            Self::Many(many) => many.iter().any(|one| one == audience),
        }
    }
}

/// `at_hash` (OpenID Connect Core, section 3.1.3.6): the left half of the hash of the access
/// token's ASCII octets, by the hash of the ID token's algorithm; Ed25519's is SHA-512.
fn at_hash(algorithm: KeyAlgorithm, access_token: &str) -> String {
    let digest = match algorithm {
        KeyAlgorithm::EdDsa => Sha512::digest(access_token).to_vec(),
        KeyAlgorithm::Es256 | KeyAlgorithm::Rs256 => Sha256::digest(access_token).to_vec(),
    };
    URL_SAFE_NO_PAD.encode(&digest[..digest.len() / 2])
}

impl JwtTokenIssuer {
    /// Signs, under a header of type `typ`, the claims `claims` makes for the algorithm of the
    /// key that signs at `issued_at` (the same key as Portcullis's own tokens).
    fn sign_for_client<C: Serialize>(
        &self,
        issued_at: DateTime<Utc>,
        typ: &str,
        claims: impl FnOnce(KeyAlgorithm) -> C,
    ) -> Result<String, TokenError> {
        if self.algorithm.is_none() {
            return Err(TokenError::Backend(BackendError::unexpected(
                "the provider signs nothing while HS256 signs",
            )));
        }
        let installed = self.installed();
        let signer = installed.signing(issued_at)?;
        let mut header = signer.header();
        header.typ = Some(typ.to_owned());
        signer.sign(&header, &claims(signer.algorithm))
    }

    /// The claims of `token`, signed by the published key its `kid` names at that key's
    /// algorithm, by this issuer. Expiry is left to the caller, as for Portcullis's own tokens,
    /// and so is `aud`: it names a client here, which only the claims say.
    fn decode_for_client<C: DeserializeOwned>(
        &self,
        token: &str,
        header: &Header,
    ) -> Result<C, TokenError> {
        // HS256 tokens carry no kid, and a relying party could not check them.
        let kid = header.kid.as_deref().ok_or_else(|| rejected("no kid"))?;
        let installed = self.installed();
        let (key, own) = installed.verifying(kid)?;
        let mut validation = own.clone();
        validation.validate_aud = false;
        jsonwebtoken::decode::<C>(token, key, &validation)
            .map(|data| data.claims)
            .map_err(|err| TokenError::Rejected(err.to_string()))
    }
}

impl ProviderTokens for JwtTokenIssuer {
    fn provider_algorithm(&self) -> Option<KeyAlgorithm> {
        self.algorithm
    }

    fn issue_client_access(&self, claims: &ClientAccessClaims) -> Result<String, TokenError> {
        let (sub, sid) = match &claims.subject {
            TokenSubject::User {
                user_id,
                session_id,
            } => (user_id.to_string(), Some(session_id.to_string())),
            TokenSubject::Client => (claims.client_id.to_string(), None),
        };
        let wire = ClientAccessWire {
            iss: self.issuer.clone(),
            sub,
            aud: claims.client_id.to_string(),
            client_id: claims.client_id.to_string(),
            scope: claims.scopes.to_string(),
            exp: claims.expires_at.timestamp(),
            iat: claims.issued_at.timestamp(),
            jti: claims.token_id.clone(),
            sid,
        };
        self.sign_for_client(claims.issued_at, CLIENT_ACCESS, |_| wire)
    }

    fn issue_id_token(&self, claims: &IdClaims, access_token: &str) -> Result<String, TokenError> {
        let client = claims.client_id.as_str();
        self.sign_for_client(claims.issued_at, "JWT", |algorithm| IdTokenWire {
            iss: &self.issuer,
            sub: claims.user_id.to_string(),
            aud: [client],
            azp: client,
            exp: claims.expires_at.timestamp(),
            iat: claims.issued_at.timestamp(),
            auth_time: claims.auth_time.timestamp(),
            nonce: claims.nonce.as_deref(),
            amr: claims
                .methods
                .iter()
                .map(|method| method.as_str())
                .collect(),
            sid: claims.session_id.to_string(),
            at_hash: at_hash(algorithm, access_token),
            name: claims.name.as_deref(),
            email: claims.email.as_ref().map(|(email, _)| email.as_str()),
            email_verified: claims.email.as_ref().map(|&(_, verified)| verified),
        })
    }

    fn verify_client_access(&self, token: &str) -> Result<ClientAccessClaims, TokenError> {
        let header = read_header(token)?;
        if !header.typ.as_deref().is_some_and(is_client_access) {
            return Err(rejected("not a client's access token"));
        }
        let wire: ClientAccessWire = self.decode_for_client(token, &header)?;
        if wire.aud != wire.client_id {
            return Err(rejected("aud"));
        }
        let subject = match &wire.sid {
            Some(sid) => TokenSubject::User {
                user_id: UserId(wire.sub.parse().map_err(|_| rejected("sub"))?),
                session_id: SessionId(Uuid::parse_str(sid).map_err(|_| rejected("sid"))?),
            },
            None if wire.sub == wire.client_id => TokenSubject::Client,
            None => return Err(rejected("sub")),
        };
        Ok(ClientAccessClaims {
            subject,
            scopes: Scopes::parse(&wire.scope).map_err(|_| rejected("scope"))?,
            issued_at: timestamp(wire.iat)?,
            expires_at: timestamp(wire.exp)?,
            client_id: ClientId(wire.client_id),
            token_id: wire.jti,
        })
    }

    fn read_id_token_hint(&self, token: &str) -> Result<IdTokenHint, TokenError> {
        let header = read_header(token)?;
        if header.typ.as_deref().is_some_and(is_client_access) {
            return Err(rejected("a client's access token"));
        }
        let wire: IdTokenHintWire = self
            .decode_for_client(token, &header)
            // As the port says: a hint is not worth a reload of the key table. Only an ID token
            // from just after a `keys rotate --now` elsewhere meets this before the next refresh.
            .map_err(|err| match err {
                TokenError::UnknownKey(_) => rejected("unknown kid"),
                other => other,
            })?;
        if !wire.aud.contains(&wire.azp) {
            return Err(rejected("aud"));
        }
        Ok(IdTokenHint {
            user_id: UserId(wire.sub.parse().map_err(|_| rejected("sub"))?),
            client_id: ClientId(wire.azp),
        })
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;
    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
    use serde_json::{Value, json};

    use super::*;
    use crate::domain::KeySet;
    use crate::domain::mfa::AuthMethod;
    use crate::domain::oauth::Scope;
    use crate::domain::ports::{KeyRing as _, TokenIssuer as _};
    use crate::outbound::jwt::tests::{ALGORITHMS, SECRET, claims, signing_from, switched_at};

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap()
    }

    fn client() -> ClientId {
        ClientId("dGhlIGNsaWVudCBpZA".to_owned())
    }

    fn user() -> TokenSubject {
        TokenSubject::User {
            user_id: UserId(42),
            session_id: SessionId::random(),
        }
    }

    fn access(subject: TokenSubject) -> ClientAccessClaims {
        let now = now();
        ClientAccessClaims {
            subject,
            client_id: client(),
            scopes: Scopes::of([Scope::OpenId, Scope::Email]),
            issued_at: now,
            expires_at: now + TimeDelta::minutes(10),
            token_id: Uuid::new_v4().to_string(),
        }
    }

    fn id_claims(issued_at: DateTime<Utc>) -> IdClaims {
        IdClaims {
            user_id: UserId(42),
            client_id: client(),
            session_id: SessionId::random(),
            nonce: Some("n-0S6_WzA2Mj".to_owned()),
            auth_time: issued_at - TimeDelta::minutes(3),
            methods: vec![AuthMethod::Password, AuthMethod::Otp],
            issued_at,
            expires_at: issued_at + TimeDelta::minutes(10),
            name: Some("Ada Lovelace".to_owned()),
            email: Some(("ada@example.com".to_owned(), true)),
        }
    }

    /// The header (0) or the claims (1) of `token`, as JSON.
    fn part(token: &str, index: usize) -> Value {
        let part = token.split('.').nth(index).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    fn is_rejected<T>(result: Result<T, TokenError>) -> bool {
        matches!(result, Err(TokenError::Rejected(_)))
    }

    #[test]
    fn client_access_tokens_round_trip_for_users_and_clients() {
        for algorithm in ALGORITHMS {
            let (issuer, key) = signing_from(algorithm, now());
            assert_eq!(issuer.provider_algorithm(), Some(algorithm));
            for subject in [user(), TokenSubject::Client] {
                let claims = access(subject.clone());
                let token = issuer.issue_client_access(&claims).unwrap();
                let header = part(&token, 0);
                assert_eq!(header["typ"], "at+jwt");
                assert_eq!(header["kid"], key.kid.as_str());
                assert_eq!(header["alg"], algorithm.as_str());
                let payload = part(&token, 1);
                let (sub, sid) = match &subject {
                    TokenSubject::User {
                        user_id,
                        session_id,
                    } => (user_id.to_string(), Some(json!(session_id.to_string()))),
                    TokenSubject::Client => (client().to_string(), None),
                };
                assert_eq!(payload["sub"], sub);
                assert_eq!(payload.get("sid").cloned(), sid);
                assert_eq!(payload["iss"], "portcullis");
                assert_eq!(payload["aud"], client().as_str());
                assert_eq!(payload["client_id"], client().as_str());
                assert_eq!(payload["scope"], "openid email");
                assert_eq!(payload["jti"], claims.token_id.as_str());
                assert_eq!(payload["iat"], claims.issued_at.timestamp());
                assert_eq!(payload["exp"], claims.expires_at.timestamp());
                assert_eq!(issuer.verify_client_access(&token).unwrap(), claims);
            }
        }
    }

    #[test]
    fn the_provider_signs_nothing_while_hs256_signs() {
        let issuer = JwtTokenIssuer::new(SECRET, None, "portcullis", "portcullis-api").unwrap();
        assert_eq!(issuer.provider_algorithm(), None);
        assert!(matches!(
            issuer.issue_client_access(&access(user())),
            Err(TokenError::Backend(_))
        ));
        assert!(matches!(
            issuer.issue_id_token(&id_claims(now()), "access"),
            Err(TokenError::Backend(_))
        ));
    }

    #[test]
    fn own_and_client_access_tokens_are_each_refused_where_the_other_is_expected() {
        let at = now();
        let (issuer, key) = signing_from(KeyAlgorithm::EdDsa, at);
        let own = issuer.issue(&claims()).unwrap();
        assert!(is_rejected(issuer.verify_client_access(&own)));
        let client_token = issuer.issue_client_access(&access(user())).unwrap();
        assert!(is_rejected(issuer.verify(&client_token)));
        // Portcullis's own claims under a client's `typ` are refused for that alone.
        let own_claims = part(&own, 1);
        let as_own = issuer.sign_for_client(at, "JWT", |_| &own_claims).unwrap();
        assert!(issuer.verify(&as_own).is_ok());
        for typ in [
            "at+jwt",
            "AT+JWT",
            "application/at+jwt",
            "Application/At+Jwt",
        ] {
            let token = issuer.sign_for_client(at, typ, |_| &own_claims).unwrap();
            assert!(is_rejected(issuer.verify(&token)), "{typ}");
        }
        // HS256 never, with the shared secret or the public key, with or without a kid.
        let client_claims = part(&client_token, 1);
        for (kid, secret) in [
            (None, SECRET),
            (Some(key.kid.clone()), SECRET),
            (Some(key.kid.clone()), key.public_jwk.as_bytes()),
        ] {
            let mut header = Header::new(Algorithm::HS256);
            header.typ = Some(CLIENT_ACCESS.to_owned());
            header.kid = kid;
            let forged =
                jsonwebtoken::encode(&header, &client_claims, &EncodingKey::from_secret(secret))
                    .unwrap();
            assert!(is_rejected(issuer.verify_client_access(&forged)));
        }
    }

    #[test]
    fn a_client_access_token_names_its_client_as_audience_and_a_known_subject() {
        let at = now();
        let (issuer, _) = signing_from(KeyAlgorithm::EdDsa, at);
        let good = part(
            &issuer
                .issue_client_access(&access(TokenSubject::Client))
                .unwrap(),
            1,
        );
        let sign = |claims: &Value| {
            issuer
                .sign_for_client(at, CLIENT_ACCESS, |_| claims)
                .unwrap()
        };
        assert!(issuer.verify_client_access(&sign(&good)).is_ok());
        for (claim, value) in [
            ("aud", json!("another-client")),
            ("aud", json!([client().as_str()])),
            // A user's id with no session, and a session with no user.
            ("sub", json!("42")),
            ("sid", json!(SessionId::random().to_string())),
            ("iss", json!("someone-else")),
            ("scope", json!("openid admin")),
        ] {
            let mut changed = good.clone();
            changed[claim] = value;
            assert!(
                is_rejected(issuer.verify_client_access(&sign(&changed))),
                "{claim}"
            );
        }
        for claim in [
            "sub",
            "iat",
            "exp",
            "iss",
            "aud",
            "client_id",
            "scope",
            "jti",
        ] {
            let mut missing = good.clone();
            missing.as_object_mut().unwrap().remove(claim);
            assert!(
                is_rejected(issuer.verify_client_access(&sign(&missing))),
                "{claim}"
            );
        }
    }

    #[test]
    fn a_token_of_a_key_not_loaded_names_it() {
        let (issuer, _) = signing_from(KeyAlgorithm::EdDsa, now());
        let (elsewhere, key) = signing_from(KeyAlgorithm::EdDsa, now());
        let token = elsewhere
            .issue_client_access(&access(TokenSubject::Client))
            .unwrap();
        assert!(matches!(
            issuer.verify_client_access(&token),
            Err(TokenError::UnknownKey(kid)) if kid == key.kid
        ));
    }

    #[test]
    fn id_tokens_carry_the_claims_openid_connect_asks_for() {
        let (issuer, key) = signing_from(KeyAlgorithm::Es256, now());
        let claims = id_claims(now());
        let token = issuer.issue_id_token(&claims, "access").unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.typ.as_deref(), Some("JWT"));
        assert_eq!(header.kid.as_deref(), Some(key.kid.as_str()));
        // As a relying party reads it: the key from the JWK, its audience, the issuer.
        let jwk: Jwk = serde_json::from_str(&key.public_jwk).unwrap();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_issuer(&["portcullis"]);
        validation.set_audience(&[client().as_str()]);
        let read = |token: &str| {
            jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(&jwk).unwrap(), &validation)
                .unwrap()
                .claims
        };
        let mut decoded = read(&token);
        let hash = decoded.as_object_mut().unwrap().remove("at_hash").unwrap();
        assert_eq!(hash.as_str().unwrap().len(), 22, "half a SHA-256");
        assert_eq!(
            decoded,
            json!({
                "iss": "portcullis",
                "sub": "42",
                "aud": [client().as_str()],
                "azp": client().as_str(),
                "exp": claims.expires_at.timestamp(),
                "iat": claims.issued_at.timestamp(),
                "auth_time": claims.auth_time.timestamp(),
                "nonce": "n-0S6_WzA2Mj",
                "amr": ["pwd", "otp"],
                "sid": claims.session_id.to_string(),
                "name": "Ada Lovelace",
                "email": "ada@example.com",
                "email_verified": true,
            })
        );
        let bare = IdClaims {
            nonce: None,
            name: None,
            email: None,
            ..claims
        };
        let decoded = read(&issuer.issue_id_token(&bare, "access").unwrap());
        for absent in ["nonce", "name", "email", "email_verified"] {
            assert!(decoded.get(absent).is_none(), "{absent}");
        }
    }

    #[test]
    fn at_hash_is_the_left_half_of_the_access_tokens_hash_for_each_algorithm() {
        for algorithm in ALGORITHMS {
            let (issuer, _) = signing_from(algorithm, now());
            let access_token = issuer.issue_client_access(&access(user())).unwrap();
            let id_token = issuer
                .issue_id_token(&id_claims(now()), &access_token)
                .unwrap();
            let half = match algorithm {
                KeyAlgorithm::EdDsa => Sha512::digest(&access_token)[..32].to_vec(),
                KeyAlgorithm::Es256 | KeyAlgorithm::Rs256 => {
                    Sha256::digest(&access_token)[..16].to_vec()
                }
            };
            assert_eq!(
                part(&id_token, 1)["at_hash"],
                URL_SAFE_NO_PAD.encode(half),
                "{algorithm}"
            );
        }
    }

    #[test]
    fn a_logout_hint_is_read_from_an_expired_id_token_and_from_nothing_else() {
        let long_ago = now() - TimeDelta::days(2);
        let (issuer, key) = signing_from(KeyAlgorithm::EdDsa, long_ago);
        let expired = issuer
            .issue_id_token(&id_claims(long_ago), "access")
            .unwrap();
        assert_eq!(
            issuer.read_id_token_hint(&expired).unwrap(),
            IdTokenHint {
                user_id: UserId(42),
                client_id: client(),
            }
        );
        // The same keys under another issuer's name.
        let impostor = JwtTokenIssuer::new(
            SECRET,
            Some(KeyAlgorithm::EdDsa),
            "impostor",
            "portcullis-api",
        )
        .unwrap();
        impostor
            .install(&KeySet::new(vec![key]), switched_at(long_ago))
            .unwrap();
        let (elsewhere, _) = signing_from(KeyAlgorithm::EdDsa, now());
        let mut other_audience = part(&expired, 1);
        other_audience["aud"] = json!(["another-client"]);
        let mut no_auth_time = part(&expired, 1);
        no_auth_time.as_object_mut().unwrap().remove("auth_time");
        for refused in [
            issuer.issue_client_access(&access(user())).unwrap(),
            issuer.issue(&claims()).unwrap(),
            impostor
                .issue_id_token(&id_claims(now()), "access")
                .unwrap(),
            elsewhere
                .issue_id_token(&id_claims(now()), "access")
                .unwrap(),
            issuer
                .sign_for_client(long_ago, "JWT", |_| &other_audience)
                .unwrap(),
            issuer
                .sign_for_client(long_ago, "JWT", |_| &no_auth_time)
                .unwrap(),
        ] {
            assert!(is_rejected(issuer.read_id_token_hint(&refused)));
        }
    }
}
