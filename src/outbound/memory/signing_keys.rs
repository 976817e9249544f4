//! [`SigningKeyStore`] in memory: the keys of one process, gone at restart (with the users
//! whose tokens they signed).

use std::sync::Mutex;

use async_trait::async_trait;

use crate::domain::ports::SigningKeyStore;
use crate::domain::{BackendError, KeyChange, KeySet, SigningKey};

#[derive(Default)]
pub struct MemorySigningKeyStore {
    keys: Mutex<KeySet>,
}

impl MemorySigningKeyStore {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl SigningKeyStore for MemorySigningKeyStore {
    async fn list_keys(&self) -> Result<Vec<SigningKey>, BackendError> {
        Ok(self
            .keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .to_vec())
    }

    async fn find_key(&self, kid: &str) -> Result<Option<SigningKey>, BackendError> {
        Ok(self
            .keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .find(kid)
            .cloned())
    }

    async fn apply_key_change(&self, change: &KeyChange) -> Result<bool, BackendError> {
        Ok(self
            .keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .apply(change))
    }
}
