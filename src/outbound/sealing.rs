//! Secrets at rest (private signing keys, TOTP secrets): AES-256-GCM under a key-encryption key
//! derived from `SECRET_KEY` with HKDF-SHA256, so the database alone (a backup, a replica, a
//! dump) never yields a signing key or a second factor.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf::{HKDF_SHA256, Salt};
use ring::rand::{SecureRandom as _, SystemRandom};

use crate::domain::BackendError;
use crate::domain::ports::SecretSealer;

/// The layout of a sealed key: this version byte, the nonce, then ciphertext and tag.
const VERSION: u8 = 1;

/// Seals and opens secrets. Each sealed secret is bound to what it belongs to (a key's `kid`
/// and algorithm, a TOTP secret's user) as additional authenticated data, so a sealed secret
/// copied onto another row does not open.
pub struct Sealer {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl Sealer {
    /// Derives the key-encryption key from the service secret.
    pub fn derive(secret: &[u8]) -> Self {
        let prk = Salt::new(HKDF_SHA256, b"portcullis").extract(secret);
        let okm = prk
            .expand(&[b"signing-key-encryption v1"], &AES_256_GCM)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        Self {
            key: LessSafeKey::new(UnboundKey::from(okm)),
            rng: SystemRandom::new(),
        }
    }

    /// # Errors
    /// When the system's random generator fails.
    pub fn seal(&self, plaintext: &[u8], bound_to: &str) -> Result<Vec<u8>, BackendError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| BackendError::unexpected("the system random generator failed"))?;
        let mut sealed = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(bound_to.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| BackendError::unexpected("sealing failed"))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// # Errors
    /// When the sealed bytes were not made by [`Sealer::seal`] with this secret and `bound_to`.
    pub fn open(&self, sealed: &[u8], bound_to: &str) -> Result<Vec<u8>, BackendError> {
        let fail = || {
            BackendError::unexpected(
                "a sealed secret does not open: it was sealed under another SECRET_KEY, or altered",
            )
        };
        let (&version, rest) = sealed.split_first().ok_or_else(fail)?;
        if version != VERSION || rest.len() < NONCE_LEN {
            return Err(fail());
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| fail())?;
        let mut buffer = ciphertext.to_vec();
        let plaintext = self
            .key
            .open_in_place(nonce, Aad::from(bound_to.as_bytes()), &mut buffer)
            .map_err(|_| fail())?;
        Ok(plaintext.to_vec())
    }
}

impl SecretSealer for Sealer {
    fn seal(&self, plaintext: &[u8], bound_to: &str) -> Result<Vec<u8>, BackendError> {
        Sealer::seal(self, plaintext, bound_to)
    }

    fn open(&self, sealed: &[u8], bound_to: &str) -> Result<Vec<u8>, BackendError> {
        Sealer::open(self, sealed, bound_to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_keys_open_only_with_the_same_secret_and_binding() {
        let sealer = Sealer::derive(b"0123456789abcdef0123456789abcdef");
        let sealed = sealer.seal(b"private key", "kid-1 EdDSA").unwrap();
        assert!(!sealed.windows(11).any(|w| w == b"private key"));
        assert_eq!(sealer.open(&sealed, "kid-1 EdDSA").unwrap(), b"private key");
        assert!(sealer.open(&sealed, "kid-2 EdDSA").is_err());
        let other = Sealer::derive(b"another secret another secret xx");
        assert!(other.open(&sealed, "kid-1 EdDSA").is_err());
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(sealer.open(&tampered, "kid-1 EdDSA").is_err());
        assert!(sealer.open(&[], "kid-1 EdDSA").is_err());
        // Two seals of the same key differ (fresh nonces).
        assert_ne!(sealed, sealer.seal(b"private key", "kid-1 EdDSA").unwrap());
    }
}
