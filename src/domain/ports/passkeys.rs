//! WebAuthn ceremonies.

use crate::domain::BackendError;

/// A WebAuthn ceremony's start: the options for the browser, and what to keep until it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CeremonyStart {
    /// JSON text for `navigator.credentials.create` or `.get` (`{"publicKey": {...}}`).
    pub options: String,
    /// The challenge, as the browser's answer will carry it: the key to find the state by.
    pub challenge: String,
    /// The adapter's state, opaque to the core.
    pub state: String,
}

/// A credential a registration ceremony verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredPasskey {
    pub credential_id: Vec<u8>,
    /// The credential as the adapter stores it: opaque to the core.
    pub credential: String,
}

/// A verified sign-in with a passkey.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAssertion {
    pub credential_id: Vec<u8>,
    /// The stored credential, updated (sign counter, backup state), when it changed.
    pub updated_credential: Option<String>,
}

/// Why a WebAuthn answer was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum CeremonyError {
    /// Malformed, for another challenge or origin, badly signed, a cloned authenticator: the
    /// caller's answer is refused.
    #[error("{0}")]
    Rejected(String),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// The WebAuthn ceremonies (passkeys): options for the browser, and the checks of its
/// answers. The relying party (id and origin) is the adapter's configuration.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
pub trait PasskeyCeremonies: Send + Sync + 'static {
    /// Options to create a discoverable credential for the user with handle `user_handle`,
    /// shown as `user_name` and `display_name`, excluding the credentials `existing`.
    ///
    /// # Errors
    /// [`CeremonyError::Backend`] when the options cannot be made.
    fn start_registration(
        &self,
        user_handle: uuid::Uuid,
        user_name: &str,
        display_name: &str,
        existing: &[Vec<u8>],
    ) -> Result<CeremonyStart, CeremonyError>;

    /// Checks the browser's answer (the `PublicKeyCredential` as JSON) to a registration
    /// against its `state`.
    ///
    /// # Errors
    /// [`CeremonyError::Rejected`] for an answer that does not verify.
    fn finish_registration(
        &self,
        state: &str,
        response: &str,
    ) -> Result<RegisteredPasskey, CeremonyError>;

    /// Options for a sign-in with any discoverable credential (no user named beforehand).
    ///
    /// # Errors
    /// [`CeremonyError::Backend`] when the options cannot be made.
    fn start_authentication(&self) -> Result<CeremonyStart, CeremonyError>;

    /// The challenge a browser's answer carries, to find its ceremony by.
    ///
    /// # Errors
    /// [`CeremonyError::Rejected`] for a malformed answer.
    fn challenge_of(&self, response: &str) -> Result<String, CeremonyError>;

    /// The credential id an assertion claims to be made with, unverified: which stored
    /// credential to check it against.
    ///
    /// # Errors
    /// [`CeremonyError::Rejected`] for a malformed answer.
    fn credential_of(&self, response: &str) -> Result<Vec<u8>, CeremonyError>;

    /// Checks an assertion against the ceremony's `state` and the stored `credential` of the
    /// user with handle `user_handle`.
    ///
    /// # Errors
    /// [`CeremonyError::Rejected`] for an assertion that does not verify.
    fn finish_authentication(
        &self,
        state: &str,
        response: &str,
        user_handle: uuid::Uuid,
        credential: &str,
    ) -> Result<VerifiedAssertion, CeremonyError>;
}
