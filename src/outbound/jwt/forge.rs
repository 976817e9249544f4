//! Key pairs for EdDSA (Ed25519) and ES256 (P-256), made with `ring`, and for RS256, made with
//! the `rsa` crate (ring signs with RSA keys but cannot make them); their private halves are
//! sealed at once and their `kid` is the RFC 7638 thumbprint of the public key.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
};
use rsa::RsaPrivateKey;
use rsa::pkcs1::EncodeRsaPrivateKey as _;
use rsa::rand_core::OsRng;
use rsa::traits::PublicKeyParts as _;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::domain::ports::KeyForge;
use crate::domain::{BackendError, GeneratedKey, KeyAlgorithm};
use crate::outbound::sealing::Sealer;

/// The modulus of an RS256 key: OpenID Connect asks for at least 2048 bits, and more would
/// only slow every signature down.
const RSA_BITS: usize = 2048;

/// [`KeyForge`] on `ring`'s generators, and the `rsa` crate's for RS256.
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

    /// Names the key by the thumbprint of `required` (its public members, the ones RFC 7638
    /// hashes), and seals `private_der` to that name.
    fn finish(
        &self,
        algorithm: KeyAlgorithm,
        required: Value,
        private_der: &[u8],
    ) -> Result<GeneratedKey, BackendError> {
        // serde_json writes object members sorted (no `preserve_order`), with no whitespace:
        // exactly the thumbprint's canonical form.
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(required.to_string()));
        let mut jwk = required;
        jwk["kid"] = kid.clone().into();
        jwk["alg"] = algorithm.as_str().into();
        jwk["use"] = "sig".into();
        Ok(GeneratedKey {
            sealed_private: self.sealer.seal(private_der, &binding(&kid, algorithm))?,
            public_jwk: jwk.to_string(),
            kid,
        })
    }
}

/// What binds a sealed private key to its row.
pub(super) fn binding(kid: &str, algorithm: KeyAlgorithm) -> String {
    format!("{kid} {algorithm}")
}

impl KeyForge for RingKeyForge {
    fn generate(&self, algorithm: KeyAlgorithm) -> Result<GeneratedKey, BackendError> {
        let failed = || BackendError::unexpected("key generation failed");
        let rejected = || BackendError::unexpected("generated key rejected");
        // The members of the thumbprint, in RFC 7638's lexicographic order; the private key
        // in the DER form jsonwebtoken's `EncodingKey` reads for the algorithm.
        match algorithm {
            KeyAlgorithm::EdDsa => {
                let pkcs8 = Ed25519KeyPair::generate_pkcs8(&self.rng).map_err(|_| failed())?;
                let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| rejected())?;
                let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
                let required = json!({"crv": "Ed25519", "kty": "OKP", "x": x});
                self.finish(algorithm, required, pkcs8.as_ref())
            }
            KeyAlgorithm::Es256 => {
                let pkcs8 =
                    EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &self.rng)
                        .map_err(|_| failed())?;
                let pair = EcdsaKeyPair::from_pkcs8(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    pkcs8.as_ref(),
                    &self.rng,
                )
                .map_err(|_| rejected())?;
                // Uncompressed point: 0x04, then x and y of 32 bytes each.
                let point = pair.public_key().as_ref();
                let (x, y) = point[1..].split_at(32);
                let (x, y) = (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y));
                let required = json!({"crv": "P-256", "kty": "EC", "x": x, "y": y});
                self.finish(algorithm, required, pkcs8.as_ref())
            }
            KeyAlgorithm::Rs256 => {
                // The `rsa` crate's arithmetic is not constant-time (RUSTSEC-2023-0071): it only
                // makes the pair, once, where nobody outside can time it; `ring` signs with it
                // (jwt.rs), and nothing ever decrypts.
                let key = RsaPrivateKey::new(&mut OsRng, RSA_BITS).map_err(|_| failed())?;
                // ring's `RsaKeyPair::from_der` reads PKCS#1, not PKCS#8.
                let pkcs1 = key.to_pkcs1_der().map_err(|_| rejected())?;
                let e = URL_SAFE_NO_PAD.encode(key.e().to_bytes_be());
                let n = URL_SAFE_NO_PAD.encode(key.n().to_bytes_be());
                let required = json!({"e": e, "kty": "RSA", "n": n});
                self.finish(algorithm, required, pkcs1.as_bytes())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fresh_sealed_and_named_by_their_thumbprint() {
        let sealer = Arc::new(Sealer::derive(b"0123456789abcdef0123456789abcdef"));
        let forge = RingKeyForge::new(sealer.clone());
        for (algorithm, kty) in [
            (KeyAlgorithm::EdDsa, "OKP"),
            (KeyAlgorithm::Es256, "EC"),
            (KeyAlgorithm::Rs256, "RSA"),
        ] {
            let a = forge.generate(algorithm).unwrap();
            let b = forge.generate(algorithm).unwrap();
            assert_ne!(a.kid, b.kid);
            let jwk: serde_json::Value = serde_json::from_str(&a.public_jwk).unwrap();
            assert_eq!(jwk["kty"], kty);
            assert_eq!(jwk["kid"], a.kid.as_str());
            assert_eq!(jwk["alg"], algorithm.as_str());
            assert_eq!(jwk["use"], "sig");
            assert!(
                jwk.get("d").is_none() && jwk.get("p").is_none(),
                "private part published"
            );
            // jsonwebtoken's own RFC 7638 implementation agrees.
            let parsed: jsonwebtoken::jwk::Jwk = serde_json::from_str(&a.public_jwk).unwrap();
            assert_eq!(
                parsed
                    .thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256)
                    .unwrap(),
                a.kid
            );
            let der = sealer
                .open(&a.sealed_private, &binding(&a.kid, algorithm))
                .unwrap();
            assert!(der.len() > 32);
        }
    }

    #[test]
    fn rsa_keys_are_2048_bits_with_their_private_half_in_pkcs1() {
        use rsa::pkcs1::DecodeRsaPrivateKey as _;

        let sealer = Arc::new(Sealer::derive(b"0123456789abcdef0123456789abcdef"));
        let key = RingKeyForge::new(sealer.clone())
            .generate(KeyAlgorithm::Rs256)
            .unwrap();
        let jwk: serde_json::Value = serde_json::from_str(&key.public_jwk).unwrap();
        assert_eq!(jwk["e"], "AQAB");
        let n = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
        assert_eq!(n.len(), 256);
        assert_ne!(n[0], 0, "big-endian with no leading zero");
        let der = sealer
            .open(&key.sealed_private, &binding(&key.kid, KeyAlgorithm::Rs256))
            .unwrap();
        let private = RsaPrivateKey::from_pkcs1_der(&der).unwrap();
        assert_eq!(private.n().to_bytes_be(), n);
    }

    #[test]
    fn the_thumbprint_follows_rfc_7638() {
        // RFC 8037, appendix A.3: the thumbprint of its example Ed25519 key.
        let required = json!({"crv": "Ed25519", "kty": "OKP", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
        assert_eq!(
            URL_SAFE_NO_PAD.encode(Sha256::digest(required.to_string())),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
        // RFC 7638, section 3.1: its example RSA key.
        let required = json!({"kty": "RSA", "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw", "e": "AQAB"});
        assert_eq!(
            URL_SAFE_NO_PAD.encode(Sha256::digest(required.to_string())),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }
}
