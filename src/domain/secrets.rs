//! Secrets the service hands out (tokens, codes, cookies) and what it keeps of them: 256 random
//! bits, and the SHA-256 that is stored in their place.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::Rng as _;
use sha2::{Digest as _, Sha256};

/// The hex SHA-256 of a token: enough to store, since a token carries 256 random bits.
pub(crate) fn sha256_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// 256 bits from a cryptographically secure generator seeded by the operating system, in
/// unpadded base64url (43 characters).
pub(crate) fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}
