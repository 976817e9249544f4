//! Key pairs for EdDSA (Ed25519) and ES256 (P-256), made with `ring`, whose private halves are
//! sealed at once and whose `kid` is the RFC 7638 thumbprint of the public key.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::domain::ports::KeyForge;
use crate::domain::{BackendError, GeneratedKey, KeyAlgorithm};
use crate::outbound::sealing::Sealer;

/// [`KeyForge`] on `ring`'s generators.
pub struct RingKeyForge {
    sealer: Arc<Sealer>,
    rng: SystemRandom,
}

impl RingKeyForge {
    pub fn new(sealer: Arc<Sealer>) -> Self {
        Self {
            sealer,
            rng: SystemRandom::new(),
        }
    }
}

/// What binds a sealed private key to its row.
pub(super) fn binding(kid: &str, algorithm: KeyAlgorithm) -> String {
    format!("{kid} {algorithm}")
}

impl KeyForge for RingKeyForge {
    fn generate(&self, algorithm: KeyAlgorithm) -> Result<GeneratedKey, BackendError> {
        let fail = |_| BackendError::unexpected("key generation failed");
        // The members of the thumbprint, in RFC 7638's lexicographic order.
        let (pkcs8, required) = match algorithm {
            KeyAlgorithm::EdDsa => {
                let pkcs8 = Ed25519KeyPair::generate_pkcs8(&self.rng).map_err(fail)?;
                let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
                    .map_err(|_| BackendError::unexpected("generated key rejected"))?;
                let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
                (pkcs8, json!({"crv": "Ed25519", "kty": "OKP", "x": x}))
            }
            KeyAlgorithm::Es256 => {
                let pkcs8 =
                    EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &self.rng)
                        .map_err(fail)?;
                let pair = EcdsaKeyPair::from_pkcs8(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    pkcs8.as_ref(),
                    &self.rng,
                )
                .map_err(|_| BackendError::unexpected("generated key rejected"))?;
                // Uncompressed point: 0x04, then x and y of 32 bytes each.
                let point = pair.public_key().as_ref();
                let (x, y) = point[1..].split_at(32);
                let (x, y) = (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y));
                (pkcs8, json!({"crv": "P-256", "kty": "EC", "x": x, "y": y}))
            }
        };
        // serde_json writes object members sorted (no `preserve_order`), with no whitespace:
        // exactly the thumbprint's canonical form.
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(required.to_string()));
        let mut jwk = required;
        jwk["kid"] = kid.clone().into();
        jwk["alg"] = algorithm.as_str().into();
        jwk["use"] = "sig".into();
        Ok(GeneratedKey {
            sealed_private: self
                .sealer
                .seal(pkcs8.as_ref(), &binding(&kid, algorithm))?,
            public_jwk: jwk.to_string(),
            kid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fresh_sealed_and_named_by_their_thumbprint() {
        let sealer = Arc::new(Sealer::derive(b"0123456789abcdef0123456789abcdef"));
        let forge = RingKeyForge::new(sealer.clone());
        for (algorithm, kty, crv) in [
            (KeyAlgorithm::EdDsa, "OKP", "Ed25519"),
            (KeyAlgorithm::Es256, "EC", "P-256"),
        ] {
            let a = forge.generate(algorithm).unwrap();
            let b = forge.generate(algorithm).unwrap();
            assert_ne!(a.kid, b.kid);
            let jwk: serde_json::Value = serde_json::from_str(&a.public_jwk).unwrap();
            assert_eq!(jwk["kty"], kty);
            assert_eq!(jwk["crv"], crv);
            assert_eq!(jwk["kid"], a.kid.as_str());
            assert_eq!(jwk["alg"], algorithm.as_str());
            assert_eq!(jwk["use"], "sig");
            assert!(jwk.get("d").is_none(), "private part published");
            assert_eq!(a.kid.len(), 43, "a SHA-256 thumbprint in base64url");
            let pkcs8 = sealer
                .open(&a.sealed_private, &binding(&a.kid, algorithm))
                .unwrap();
            assert!(pkcs8.len() > 32);
        }
    }

    #[test]
    fn the_thumbprint_follows_rfc_7638() {
        // RFC 8037, appendix A.3: the thumbprint of its example Ed25519 key.
        let required = json!({"crv": "Ed25519", "kty": "OKP", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
        assert_eq!(
            URL_SAFE_NO_PAD.encode(Sha256::digest(required.to_string())),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }
}
