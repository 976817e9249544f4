//! Access tokens as JWTs (RFC 7519): HS256 with the shared secret, or EdDSA / ES256 / RS256
//! with the keys of the shared key table, each pinned to its algorithm; and, with the same keys,
//! the tokens of the OpenID provider's relying parties (`provider.rs`).

mod forge;
mod provider;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

pub use forge::RingKeyForge;

use super::sealing::Sealer;
use crate::domain::mfa::AuthMethod;
use crate::domain::ports::{AccessClaims, KeyRing, PyauthClaims, TokenError, TokenIssuer};
use crate::domain::{
    BackendError, Hs256Acceptance, KeyAlgorithm, KeySet, KeyState, SessionId, SigningKey, UserId,
};

/// The shortest HMAC key accepted: 256 bits, the size of HS256's output.
pub const MIN_SECRET_BYTES: usize = 32;

/// [`TokenIssuer`] and [`KeyRing`]: signs with HS256 and the shared secret, or with the
/// asymmetric key the installed key set says signs at the token's time; verifies with the
/// key the token's `kid` names, at that key's algorithm only.
pub struct JwtTokenIssuer {
    /// `None`: HS256 signs.
    algorithm: Option<KeyAlgorithm>,
    secret: (EncodingKey, DecodingKey),
    /// Built once: HS256 tokens are checked on every request that misses the verified set.
    secret_validation: Validation,
    /// The rules of a pyauth token: HS256, `sub` and `exp`, no issuer or audience.
    pyauth_validation: Validation,
    sealer: Arc<Sealer>,
    issuer: String,
    audience: String,
    keys: RwLock<Arc<Installed>>,
}

/// Tokens remembered as verified, per key-set generation.
const VERIFIED_CAPACITY: usize = 16_384;

/// The key set in the form signing and verification use.
#[derive(Default)]
struct Installed {
    source: KeySet,
    /// `None`: HS256 tokens are refused.
    hs256: Option<Hs256Acceptance>,
    current: Option<Signer>,
    next: Option<Signer>,
    verifiers: HashMap<String, (DecodingKey, Validation)>,
    /// The claims of tokens this generation verified, by the SHA-256 of the whole token. An
    /// Ed25519 or P-256 check costs tens of microseconds, and a client presents the same
    /// token for its whole life; only tokens that verified get in, so made-up ones cannot fill
    /// it. Installing new keys starts an empty one, so a retired key's tokens go with it. At
    /// most [`VERIFIED_CAPACITY`] entries (about 3 MiB); when full it starts over.
    verified: Mutex<HashMap<[u8; 32], AccessClaims>>,
}

struct Signer {
    kid: String,
    algorithm: KeyAlgorithm,
    activates_at: DateTime<Utc>,
    key: SigningPrivateKey,
}

/// A private key as it signs.
enum SigningPrivateKey {
    /// Ed25519 and P-256, through jsonwebtoken.
    Jose(EncodingKey),
    /// RSA through `ring`, whose private-key arithmetic is constant-time: the `rsa` crate
    /// behind jsonwebtoken's RSA signing is not (RUSTSEC-2023-0071), and a token endpoint
    /// signs whenever anyone asks.
    Rsa(Box<ring::signature::RsaKeyPair>),
}

impl Signer {
    /// A header naming the key and its algorithm.
    fn header(&self) -> Header {
        let mut header = Header::new(jose(self.algorithm));
        header.kid = Some(self.kid.clone());
        header
    }

    /// The compact JWS of `claims` under `header`.
    fn sign(&self, header: &Header, claims: &impl Serialize) -> Result<String, TokenError> {
        let key = match &self.key {
            SigningPrivateKey::Jose(key) => return encode(header, claims, key),
            SigningPrivateKey::Rsa(key) => key,
        };
        let fail = |err: String| TokenError::Backend(BackendError::unexpected(err));
        let signing_input = format!("{}.{}", segment(header)?, segment(claims)?);
        let mut signature = vec![0; key.public().modulus_len()];
        key.sign(
            &ring::signature::RSA_PKCS1_SHA256,
            &ring::rand::SystemRandom::new(),
            signing_input.as_bytes(),
            &mut signature,
        )
        .map_err(|err| fail(err.to_string()))?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }
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
    /// How the user signed in (RFC 8176); tokens from before it was added have none.
    #[serde(default)]
    amr: Vec<String>,
}

/// The only algorithm a key may verify, with the claims every token must carry. Expiry is
/// checked by the core against its Clock, with its configured leeway.
fn validation(algorithm: Algorithm, issuer: &str, audience: &str) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.required_spec_claims = ["sub", "iat", "exp", "iss", "aud"]
        .into_iter()
        .map(String::from)
        .collect::<HashSet<_>>();
    validation.validate_exp = false;
    validation
}

fn jose(algorithm: KeyAlgorithm) -> Algorithm {
    match algorithm {
        KeyAlgorithm::EdDsa => Algorithm::EdDSA,
        KeyAlgorithm::Es256 => Algorithm::ES256,
        KeyAlgorithm::Rs256 => Algorithm::RS256,
    }
}

impl JwtTokenIssuer {
    /// An issuer signing with `algorithm` (`None`: HS256 with `secret`). Asymmetric keys
    /// arrive through [`KeyRing::install`]; until then, only HS256 tokens are made or accepted,
    /// and only when HS256 is the configured algorithm.
    ///
    /// # Errors
    /// When the secret is shorter than [`MIN_SECRET_BYTES`].
    pub fn new(
        secret: &[u8],
        algorithm: Option<KeyAlgorithm>,
        issuer: &str,
        audience: &str,
    ) -> Result<Self, String> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "the signing secret must be at least {MIN_SECRET_BYTES} bytes"
            ));
        }
        let installed = Installed {
            hs256: algorithm.is_none().then_some(Hs256Acceptance::Always),
            ..Installed::default()
        };
        let mut pyauth_validation = Validation::new(Algorithm::HS256);
        pyauth_validation.required_spec_claims =
            ["sub", "exp"].into_iter().map(String::from).collect();
        pyauth_validation.validate_exp = false;
        pyauth_validation.validate_aud = false;
        Ok(Self {
            algorithm,
            secret: (
                EncodingKey::from_secret(secret),
                DecodingKey::from_secret(secret),
            ),
            secret_validation: validation(Algorithm::HS256, issuer, audience),
            pyauth_validation,
            sealer: Arc::new(Sealer::derive(secret)),
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            keys: RwLock::new(Arc::new(installed)),
        })
    }

    /// The sealer of this issuer's secret, for the forge that makes its keys.
    pub fn sealer(&self) -> Arc<Sealer> {
        Arc::clone(&self.sealer)
    }

    fn installed(&self) -> Arc<Installed> {
        Arc::clone(&self.keys.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn signer(&self, key: &SigningKey) -> Result<Signer, BackendError> {
        let der = self.sealer.open(
            &key.sealed_private,
            &forge::binding(&key.kid, key.algorithm),
        )?;
        Ok(Signer {
            kid: key.kid.clone(),
            algorithm: key.algorithm,
            activates_at: key.activates_at,
            key: match key.algorithm {
                KeyAlgorithm::EdDsa => SigningPrivateKey::Jose(EncodingKey::from_ed_der(&der)),
                KeyAlgorithm::Es256 => SigningPrivateKey::Jose(EncodingKey::from_ec_der(&der)),
                KeyAlgorithm::Rs256 => SigningPrivateKey::Rsa(Box::new(
                    ring::signature::RsaKeyPair::from_der(&der)
                        .map_err(|err| BackendError::unexpected(err.to_string()))?,
                )),
            },
        })
    }

    fn verifier(&self, key: &SigningKey) -> Result<(DecodingKey, Validation), BackendError> {
        let jwk: Jwk = serde_json::from_str(&key.public_jwk).map_err(BackendError::unexpected)?;
        let decoding = DecodingKey::from_jwk(&jwk).map_err(BackendError::unexpected)?;
        let algorithm = jose(key.algorithm);
        Ok((
            decoding,
            validation(algorithm, &self.issuer, &self.audience),
        ))
    }
}

impl KeyRing for JwtTokenIssuer {
    fn install(&self, keys: &KeySet, hs256: Hs256Acceptance) -> Result<(), BackendError> {
        let installed = self.installed();
        if installed.source == *keys && installed.hs256 == Some(hs256) {
            return Ok(());
        }
        let signer = |state| {
            keys.keys()
                .iter()
                .find(|key| key.state == state)
                .map(|key| self.signer(key))
                .transpose()
        };
        let fresh = Installed {
            source: keys.clone(),
            hs256: Some(hs256),
            current: signer(KeyState::Current)?,
            next: signer(KeyState::Next)?,
            verifiers: keys
                .published()
                .map(|key| Ok((key.kid.clone(), self.verifier(key)?)))
                .collect::<Result<_, BackendError>>()?,
            verified: Mutex::default(),
        };
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
        Ok(())
    }

    fn signing_kid(&self, at: DateTime<Utc>) -> Option<String> {
        self.algorithm?;
        self.installed()
            .signer_at(at)
            .map(|signer| signer.kid.clone())
    }
}

impl Installed {
    /// The key that signs a token issued at `at`: every instance switches to the next key at
    /// its time, promoted or not yet.
    fn signer_at(&self, at: DateTime<Utc>) -> Option<&Signer> {
        match (&self.next, &self.current) {
            (Some(next), _) if next.activates_at <= at => Some(next),
            (_, current) => current.as_ref(),
        }
    }

    /// [`Self::signer_at`], when a key must sign.
    fn signing(&self, at: DateTime<Utc>) -> Result<&Signer, TokenError> {
        self.signer_at(at).ok_or_else(|| {
            TokenError::Backend(BackendError::unexpected("no signing key is loaded"))
        })
    }

    /// The published key `kid` names, with the validation of Portcullis's own tokens.
    fn verifying(&self, kid: &str) -> Result<&(DecodingKey, Validation), TokenError> {
        self.verifiers.get(kid).ok_or_else(|| {
            if self.source.find(kid).is_none() {
                TokenError::UnknownKey(kid.to_owned())
            } else {
                TokenError::Rejected("retired kid".to_owned())
            }
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
            amr: claims
                .methods
                .iter()
                .map(|method| method.as_str().to_owned())
                .collect(),
        };
        if self.algorithm.is_none() {
            return encode(&Header::new(Algorithm::HS256), &wire, &self.secret.0);
        }
        let installed = self.installed();
        let signer = installed.signing(claims.issued_at)?;
        signer.sign(&signer.header(), &wire)
    }

    fn verify_pyauth(&self, token: &str) -> Result<PyauthClaims, TokenError> {
        // HS256 only, whatever the header says; no issuer or audience: pyauth set neither.
        let wire = jsonwebtoken::decode::<PyauthWireClaims>(
            token,
            &self.secret.1,
            &self.pyauth_validation,
        )
        .map_err(|err| TokenError::Rejected(err.to_string()))?
        .claims;
        if wire.iss.is_some() || wire.aud.is_some() || wire.sid.is_some() {
            return Err(rejected("not in the old service's shape"));
        }
        Ok(PyauthClaims {
            user_id: UserId(wire.sub.parse().map_err(|_| rejected("sub"))?),
            expires_at: timestamp(wire.exp)?,
        })
    }

    fn verify(&self, token: &str) -> Result<AccessClaims, TokenError> {
        let installed = self.installed();
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let remembered = installed
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&digest)
            .cloned();
        if let Some(claims) = remembered {
            return Ok(claims);
        }
        let claims = self.check(token, &installed)?;
        let mut verified = installed.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= VERIFIED_CAPACITY {
            verified.clear();
        }
        verified.insert(digest, claims.clone());
        Ok(claims)
    }
}

fn rejected(what: &str) -> TokenError {
    TokenError::Rejected(what.to_owned())
}

/// A claim's NumericDate as a time.
fn timestamp(secs: i64) -> Result<DateTime<Utc>, TokenError> {
    DateTime::<Utc>::from_timestamp(secs, 0).ok_or_else(|| rejected("time out of range"))
}

fn read_header(token: &str) -> Result<Header, TokenError> {
    jsonwebtoken::decode_header(token).map_err(|err| TokenError::Rejected(err.to_string()))
}

/// One part of a compact JWS: the value's JSON, unpadded base64url.
fn segment(value: &impl Serialize) -> Result<String, TokenError> {
    let json = serde_json::to_vec(value)
        .map_err(|err| TokenError::Backend(BackendError::unexpected(err)))?;
    Ok(URL_SAFE_NO_PAD.encode(json))
}

fn encode(
    header: &Header,
    claims: &impl Serialize,
    key: &EncodingKey,
) -> Result<String, TokenError> {
    jsonwebtoken::encode(header, claims, key)
        .map_err(|err| TokenError::Backend(BackendError::unexpected(err)))
}

/// The claims of a token of the old service, as its `create_access_token` made them.
#[derive(Debug, Deserialize)]
struct PyauthWireClaims {
    sub: String,
    exp: i64,
    /// Present in Portcullis's own tokens, never in pyauth's.
    iss: Option<serde::de::IgnoredAny>,
    aud: Option<serde::de::IgnoredAny>,
    sid: Option<serde::de::IgnoredAny>,
}

impl JwtTokenIssuer {
    /// Checks `token`'s signature (by the key its `kid` names, at that key's algorithm only, or
    /// HS256 within its acceptance) and reads its claims.
    fn check(&self, token: &str, installed: &Installed) -> Result<AccessClaims, TokenError> {
        let header = read_header(token)?;
        // A client's access token is meant for the client's resource servers: even one whose
        // audience happened to match must not pass here.
        if header
            .typ
            .as_deref()
            .is_some_and(provider::is_client_access)
        {
            return Err(rejected("a client's access token"));
        }
        let wire = match &header.kid {
            Some(kid) => {
                let (key, validation) = installed.verifying(kid)?;
                jsonwebtoken::decode::<WireClaims>(token, key, validation)
            }
            None => {
                let acceptance = installed
                    .hs256
                    .ok_or_else(|| rejected("HS256 is not accepted"))?;
                let wire = jsonwebtoken::decode::<WireClaims>(
                    token,
                    &self.secret.1,
                    &self.secret_validation,
                );
                if let (
                    Ok(data),
                    Hs256Acceptance::IssuedBefore {
                        issued_before,
                        expiring_by,
                    },
                ) = (&wire, acceptance)
                    // Whole seconds: a token from the switch's own second is refused, as one
                    // SECRET_KEY could have minted after it (its client refreshes).
                    && (data.claims.iat >= issued_before.timestamp()
                        || data.claims.exp > expiring_by.timestamp())
                {
                    return Err(rejected("HS256 token from after the switch of algorithm"));
                }
                wire
            }
        }
        .map_err(|err| TokenError::Rejected(err.to_string()))?
        .claims;
        Ok(AccessClaims {
            user_id: UserId(wire.sub.parse().map_err(|_| rejected("sub"))?),
            role: wire.role.parse().map_err(|_| rejected("role"))?,
            session_id: SessionId(Uuid::parse_str(&wire.sid).map_err(|_| rejected("sid"))?),
            issued_at: timestamp(wire.iat)?,
            expires_at: timestamp(wire.exp)?,
            token_id: wire.jti,
            methods: wire
                .amr
                .iter()
                .map(|value| AuthMethod::parse(value).ok_or_else(|| rejected("amr")))
                .collect::<Result<_, _>>()?,
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
    use crate::domain::ports::KeyForge as _;

    pub(super) const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    pub(super) const ALGORITHMS: [KeyAlgorithm; 3] = [
        KeyAlgorithm::EdDsa,
        KeyAlgorithm::Es256,
        KeyAlgorithm::Rs256,
    ];

    fn issuer() -> JwtTokenIssuer {
        JwtTokenIssuer::new(SECRET, None, "portcullis", "portcullis-api").unwrap()
    }

    /// An issuer for `algorithm`, with no key installed yet, and a forge for its keys.
    fn asymmetric(algorithm: KeyAlgorithm) -> (JwtTokenIssuer, RingKeyForge) {
        let issuer =
            JwtTokenIssuer::new(SECRET, Some(algorithm), "portcullis", "portcullis-api").unwrap();
        let forge = RingKeyForge::new(issuer.sealer());
        (issuer, forge)
    }

    fn key(
        forge: &RingKeyForge,
        algorithm: KeyAlgorithm,
        state: KeyState,
        activates_at: DateTime<Utc>,
    ) -> SigningKey {
        let generated = forge.generate(algorithm).unwrap();
        SigningKey::new(generated, algorithm, state, activates_at, activates_at)
    }

    pub(super) fn switched_at(at: DateTime<Utc>) -> Hs256Acceptance {
        Hs256Acceptance::IssuedBefore {
            issued_before: at,
            expiring_by: at + TimeDelta::minutes(15),
        }
    }

    /// An issuer for `algorithm` whose one key signs from `at` on, and that key.
    pub(super) fn signing_from(
        algorithm: KeyAlgorithm,
        at: DateTime<Utc>,
    ) -> (JwtTokenIssuer, SigningKey) {
        let (issuer, forge) = asymmetric(algorithm);
        let current = key(&forge, algorithm, KeyState::Current, at);
        issuer
            .install(&KeySet::new(vec![current.clone()]), switched_at(at))
            .unwrap();
        (issuer, current)
    }

    pub(super) fn claims() -> AccessClaims {
        let now = DateTime::<Utc>::from_timestamp(Utc::now().timestamp(), 0).unwrap();
        AccessClaims {
            user_id: UserId(42),
            role: Role::Admin,
            session_id: SessionId::random(),
            issued_at: now,
            expires_at: now + TimeDelta::minutes(15),
            token_id: Uuid::new_v4().to_string(),
            methods: vec![AuthMethod::Password, AuthMethod::Otp],
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
        assert_eq!(json["amr"], serde_json::json!(["pwd", "otp"]));
        for claim in ["iat", "exp", "jti"] {
            assert!(json.get(claim).is_some(), "{claim} missing");
        }
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(JwtTokenIssuer::new(b"short", None, "i", "a").is_err());
    }

    #[test]
    fn tokens_of_another_key_issuer_or_audience_are_rejected() {
        let token = issuer().issue(&claims()).unwrap();
        for other in [
            JwtTokenIssuer::new(
                b"another-secret-another-secret-xx",
                None,
                "portcullis",
                "portcullis-api",
            ),
            JwtTokenIssuer::new(SECRET, None, "someone-else", "portcullis-api"),
            JwtTokenIssuer::new(SECRET, None, "portcullis", "another-api"),
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
    fn a_tampered_payload_is_rejected_even_after_the_original_verified() {
        let issuer = issuer();
        let token = issuer.issue(&claims()).unwrap();
        assert!(issuer.verify(&token).is_ok());
        let mut parts: Vec<String> = token.split('.').map(String::from).collect();
        let mut json: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
        json["role"] = "admin".into();
        json["sub"] = "1".into();
        parts[1] = b64(&json);
        assert!(matches!(
            issuer.verify(&parts.join(".")),
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

    #[test]
    fn pyauth_tokens_verify_in_their_shape_only() {
        let pyauth = |secret: &[u8], claims: serde_json::Value| {
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(secret),
            )
            .unwrap()
        };
        let exp = Utc::now().timestamp() + 900;
        let token = pyauth(
            SECRET,
            serde_json::json!({"sub": "42", "role": "admin", "exp": exp}),
        );
        let verified = issuer().verify_pyauth(&token).unwrap();
        assert_eq!(verified.user_id, UserId(42));
        assert_eq!(verified.expires_at.timestamp(), exp);
        // Not by the main path: it has no issuer, audience or session.
        assert!(issuer().verify(&token).is_err());
        for refused in [
            pyauth(
                b"another-secret-another-secret-xx",
                serde_json::json!({"sub": "42", "exp": exp}),
            ),
            pyauth(SECRET, serde_json::json!({"sub": "42"})),
            pyauth(SECRET, serde_json::json!({"sub": "x", "exp": exp})),
            issuer().issue(&claims()).unwrap(),
            format!(
                "{}.{}.",
                b64(&serde_json::json!({"alg": "none"})),
                token.split('.').nth(1).unwrap()
            ),
        ] {
            assert!(matches!(
                issuer().verify_pyauth(&refused),
                Err(TokenError::Rejected(_))
            ));
        }
    }

    mod key_sets {
        use super::*;

        fn header(token: &str) -> serde_json::Value {
            let part = token.split('.').next().unwrap();
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
        }

        #[test]
        fn tokens_carry_the_kid_and_verify_with_its_key_only() {
            for algorithm in ALGORITHMS {
                let (issuer, forge) = asymmetric(algorithm);
                let c = claims();
                assert!(matches!(issuer.issue(&c), Err(TokenError::Backend(_))));
                let current = key(&forge, algorithm, KeyState::Current, c.issued_at);
                let set = KeySet::new(vec![current.clone()]);
                issuer.install(&set, switched_at(c.issued_at)).unwrap();
                let token = issuer.issue(&c).unwrap();
                assert_eq!(header(&token)["kid"], current.kid.as_str());
                assert_eq!(header(&token)["alg"], algorithm.as_str());
                assert_eq!(issuer.verify(&token).unwrap(), c);
                // Another instance with the same keys verifies it; one without them does not.
                let (other, _) = asymmetric(algorithm);
                assert!(other.verify(&token).is_err());
                other.install(&set, switched_at(c.issued_at)).unwrap();
                assert_eq!(other.verify(&token).unwrap(), c);
            }
        }

        #[test]
        fn the_next_key_signs_from_its_time_and_retired_keys_stop_verifying() {
            let (issuer, forge) = asymmetric(KeyAlgorithm::EdDsa);
            let c = claims();
            let current = key(&forge, KeyAlgorithm::EdDsa, KeyState::Current, c.issued_at);
            let next = key(
                &forge,
                KeyAlgorithm::EdDsa,
                KeyState::Next,
                c.issued_at + TimeDelta::minutes(20),
            );
            let hs = switched_at(c.issued_at);
            issuer
                .install(&KeySet::new(vec![current.clone(), next.clone()]), hs)
                .unwrap();
            let old = issuer.issue(&c).unwrap();
            assert_eq!(header(&old)["kid"], current.kid.as_str());
            let later = AccessClaims {
                issued_at: next.activates_at,
                expires_at: next.activates_at + TimeDelta::minutes(15),
                ..claims()
            };
            let new = issuer.issue(&later).unwrap();
            assert_eq!(header(&new)["kid"], next.kid.as_str());
            assert!(issuer.verify(&old).is_ok() && issuer.verify(&new).is_ok());
            let retired = SigningKey {
                state: KeyState::Retired,
                ..current
            };
            issuer
                .install(&KeySet::new(vec![retired, next]), hs)
                .unwrap();
            assert!(matches!(issuer.verify(&old), Err(TokenError::Rejected(_))));
            assert!(issuer.verify(&new).is_ok());
        }

        /// The forms a library might read a published key in, as an HMAC secret would be
        /// given: the JWK, and for RSA the PEM and DER encodings too (the classic RS256-to-HS256
        /// confusion hands a verifier's PEM file to HMAC).
        fn public_forms(key: &SigningKey) -> Vec<Vec<u8>> {
            use rsa::pkcs1::EncodeRsaPublicKey as _;
            use rsa::pkcs8::{EncodePublicKey as _, LineEnding};

            let mut forms = vec![key.public_jwk.as_bytes().to_vec()];
            if key.algorithm == KeyAlgorithm::Rs256 {
                let jwk: serde_json::Value = serde_json::from_str(&key.public_jwk).unwrap();
                let number = |member: &str| {
                    rsa::BigUint::from_bytes_be(
                        &URL_SAFE_NO_PAD
                            .decode(jwk[member].as_str().unwrap())
                            .unwrap(),
                    )
                };
                let public = rsa::RsaPublicKey::new(number("n"), number("e")).unwrap();
                forms.extend([
                    public
                        .to_public_key_pem(LineEnding::LF)
                        .unwrap()
                        .into_bytes(),
                    public.to_pkcs1_pem(LineEnding::LF).unwrap().into_bytes(),
                    public.to_public_key_der().unwrap().as_bytes().to_vec(),
                    public.to_pkcs1_der().unwrap().as_bytes().to_vec(),
                ]);
            }
            forms
        }

        #[test]
        fn the_public_key_used_as_an_hmac_secret_forges_nothing() {
            for algorithm in ALGORITHMS {
                let c = claims();
                let (issuer, current) = signing_from(algorithm, c.issued_at);
                let payload = issuer
                    .issue(&c)
                    .unwrap()
                    .split('.')
                    .nth(1)
                    .unwrap()
                    .to_owned();
                let claims: serde_json::Value =
                    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&payload).unwrap()).unwrap();
                let secrets = public_forms(&current).into_iter().chain([SECRET.to_vec()]);
                for secret in secrets {
                    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
                        let mut forged_header = Header::new(alg);
                        forged_header.kid = Some(current.kid.clone());
                        let forged = jsonwebtoken::encode(
                            &forged_header,
                            &claims,
                            &EncodingKey::from_secret(&secret),
                        )
                        .unwrap();
                        assert!(
                            matches!(issuer.verify(&forged), Err(TokenError::Rejected(_))),
                            "{alg:?} accepted for a key of {algorithm}"
                        );
                    }
                }
                let none = format!(
                    "{}.{payload}.",
                    b64(&serde_json::json!({"alg": "none", "kid": current.kid}))
                );
                assert!(issuer.verify(&none).is_err());
            }
        }

        #[test]
        fn hs256_tokens_verify_only_when_issued_before_the_switch() {
            let c = claims();
            let before = JwtTokenIssuer::new(SECRET, None, "portcullis", "portcullis-api")
                .unwrap()
                .issue(&c)
                .unwrap();
            let (issuer, forge) = asymmetric(KeyAlgorithm::EdDsa);
            // Until keys are installed, an asymmetric issuer accepts no HS256 token at all.
            assert!(issuer.verify(&before).is_err());
            let current = key(&forge, KeyAlgorithm::EdDsa, KeyState::Current, c.issued_at);
            let set = KeySet::new(vec![current]);
            let switch = c.issued_at + TimeDelta::seconds(1);
            issuer.install(&set, switched_at(switch)).unwrap();
            assert_eq!(issuer.verify(&before).unwrap(), c);
            issuer.install(&set, switched_at(c.issued_at)).unwrap();
            assert!(
                issuer.verify(&before).is_err(),
                "issued in the second of the switch"
            );
            // Backdated by someone holding SECRET_KEY, but expiring after the window closes.
            let backdated = AccessClaims {
                issued_at: switch - TimeDelta::minutes(1),
                expires_at: switch + TimeDelta::days(1),
                ..claims()
            };
            let forged = JwtTokenIssuer::new(SECRET, None, "portcullis", "portcullis-api")
                .unwrap()
                .issue(&backdated)
                .unwrap();
            issuer.install(&set, switched_at(switch)).unwrap();
            assert!(issuer.verify(&forged).is_err());
        }
    }

    mod properties {
        use std::sync::LazyLock;

        use proptest::prelude::*;

        use super::*;
        use crate::domain::ports::ProviderTokens as _;
        use crate::properties::config;

        /// When the keys below start signing: every generated token is issued after it.
        const KEYS_FROM: i64 = 1_700_000_000;

        /// One issuer per algorithm, HS256 first, made once: an RSA key takes a while.
        static ISSUERS: LazyLock<Vec<JwtTokenIssuer>> = LazyLock::new(|| {
            let from = DateTime::from_timestamp(KEYS_FROM, 0).unwrap();
            std::iter::once(issuer())
                .chain(ALGORITHMS.map(|algorithm| signing_from(algorithm, from).0))
                .collect()
        });

        fn access_claims() -> impl Strategy<Value = AccessClaims> {
            let methods = prop::sample::subsequence(
                vec![
                    AuthMethod::Password,
                    AuthMethod::Otp,
                    AuthMethod::RecoveryCode,
                    AuthMethod::Webauthn,
                ],
                0..=4,
            );
            (
                any::<i64>(),
                any::<bool>(),
                any::<u128>(),
                KEYS_FROM..KEYS_FROM + 1_000_000_000,
                0i64..100_000_000,
                any::<String>(),
                methods,
            )
                .prop_map(|(user, admin, sid, iat, ttl, jti, methods)| AccessClaims {
                    user_id: UserId(user),
                    role: if admin { Role::Admin } else { Role::User },
                    session_id: SessionId(Uuid::from_u128(sid)),
                    issued_at: DateTime::from_timestamp(iat, 0).unwrap(),
                    expires_at: DateTime::from_timestamp(iat + ttl, 0).unwrap(),
                    token_id: jti,
                    methods,
                })
        }

        /// Tokens that are nearly tokens: a header naming any algorithm, a known or unknown
        /// key and a type, claims of the right names with values of any kind, any signature.
        fn forged() -> impl Strategy<Value = String> {
            let value = prop_oneof![
                Just(serde_json::Value::Null),
                any::<i64>().prop_map(serde_json::Value::from),
                any::<f64>().prop_map(serde_json::Value::from),
                "\\PC{0,12}".prop_map(serde_json::Value::from),
                Just(serde_json::json!(["pwd"])),
            ];
            let header = (
                "(HS256|EdDSA|ES256|RS256|none|HS512|PS256|)",
                prop::option::of("[a-z0-9-]{0,8}"),
                prop::option::of("(JWT|at\\+jwt|application/at\\+jwt)"),
            );
            let claims = prop::collection::btree_map(
                "(sub|role|sid|iat|exp|jti|iss|aud|amr|azp|client_id|scope)",
                value,
                0..12,
            );
            (header, claims, prop::collection::vec(any::<u8>(), 0..80)).prop_map(
                |((alg, kid, typ), claims, signature)| {
                    let header = serde_json::json!({"alg": alg, "kid": kid, "typ": typ});
                    format!(
                        "{}.{}.{}",
                        b64(&header),
                        b64(&serde_json::json!(claims)),
                        URL_SAFE_NO_PAD.encode(signature)
                    )
                },
            )
        }

        proptest! {
            // Each case signs once per algorithm, RS256 unoptimised in a debug build.
            #![proptest_config(config(24))]

            #[test]
            fn issued_tokens_verify_to_the_claims_they_were_issued_with(claims in access_claims()) {
                for issuer in ISSUERS.iter() {
                    let token = issuer.issue(&claims).unwrap();
                    prop_assert_eq!(issuer.verify(&token).unwrap(), claims.clone());
                }
            }

            #[test]
            fn a_token_with_any_one_character_changed_is_refused(
                claims in access_claims(),
                at in any::<prop::sample::Index>(),
                replacement in "[A-Za-z0-9_.-]",
            ) {
                for issuer in ISSUERS.iter() {
                    let token = issuer.issue(&claims).unwrap();
                    prop_assert!(issuer.verify(&token).is_ok());
                    let mut changed = token.clone();
                    let at = at.index(token.len());
                    changed.replace_range(at..=at, &replacement);
                    if changed != token {
                        prop_assert!(issuer.verify(&changed).is_err(), "{} {}", at, changed);
                    }
                }
            }
        }

        proptest! {
            #![proptest_config(config(256))]

            /// Access tokens, pyauth tokens, client tokens and ID token hints from anywhere are
            /// refused: never accepted, never an error of ours, never a panic.
            #[test]
            fn made_up_tokens_are_refused_by_every_reader(
                token in prop_oneof![any::<String>(), forged(), "[A-Za-z0-9_.-]{0,40}"]
            ) {
                for issuer in ISSUERS.iter() {
                    let refused = |result: Result<(), TokenError>| {
                        matches!(result, Err(TokenError::Rejected(_) | TokenError::UnknownKey(_)))
                    };
                    prop_assert!(refused(issuer.verify(&token).map(drop)));
                    prop_assert!(refused(issuer.verify_pyauth(&token).map(drop)));
                    prop_assert!(refused(issuer.verify_client_access(&token).map(drop)));
                    prop_assert!(refused(issuer.read_id_token_hint(&token).map(drop)));
                }
            }
        }
    }
}
