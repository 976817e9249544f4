//! Signing keys: their table, their making, and the ring that signs with them.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{
    BackendError, GeneratedKey, Hs256Acceptance, KeyAlgorithm, KeyChange, KeySet, SigningKey,
};

/// Storage of the signing keys, shared by every instance.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait SigningKeyStore: Send + Sync + 'static {
    /// Every key, retired ones included, oldest first.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn list_keys(&self) -> Result<Vec<SigningKey>, BackendError>;

    /// The key `kid` as the table holds it now, if any: one lookup by primary key.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn find_key(&self, kid: &str) -> Result<Option<SigningKey>, BackendError>;

    /// Applies `change` all or nothing. `Ok(false)`, with nothing changed, when a move finds its
    /// key no longer in its `from` state, or the insert would make a second `next` or
    /// `current` key: another instance (or the CLI) got there first.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn apply_key_change(&self, change: &KeyChange) -> Result<bool, BackendError>;
}

/// Makes key pairs, and seals their private halves for storage.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
pub trait KeyForge: Send + Sync + 'static {
    /// A new key pair of `algorithm`.
    ///
    /// # Errors
    /// [`BackendError`] when the generator or the sealing fails.
    fn generate(&self, algorithm: KeyAlgorithm) -> Result<GeneratedKey, BackendError>;
}

/// Where the token issuer takes its keys from: the core installs each new state of the key
/// table, and the issuer signs and verifies with it until the next one.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
pub trait KeyRing: Send + Sync + 'static {
    /// Replaces the keys in use.
    ///
    /// # Errors
    /// [`BackendError`] when a key cannot be opened (a different `SECRET_KEY` sealed it); the
    /// keys in use stay as they were.
    fn install(&self, keys: &KeySet, hs256: Hs256Acceptance) -> Result<(), BackendError>;

    /// The `kid` of the key that signs a token issued at `at` with the keys in use; `None`
    /// while HS256 signs (the shared secret has no `kid` and cannot be retired).
    fn signing_kid(&self, at: DateTime<Utc>) -> Option<String>;
}
