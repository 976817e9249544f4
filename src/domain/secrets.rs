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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::properties::config;

    proptest! {
        #![proptest_config(config(256))]

        /// Refresh tokens, link tokens, mfa tokens, cookies and client secrets are all found by
        /// this hash: any text presented has one, and a token with one character changed (or
        /// cut, or padded) has another, so it finds nothing.
        #[test]
        fn a_presented_token_is_found_only_as_it_was_handed_out(
            at in any::<prop::sample::Index>(),
            replacement in "\\PC",
            noise in any::<String>(),
        ) {
            let token = random_secret();
            prop_assert_eq!(token.len(), 43);
            prop_assert_eq!(URL_SAFE_NO_PAD.decode(&token).map(|b| b.len()), Ok(32));
            let hash = sha256_hex(&token);
            prop_assert!(hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            let at = at.index(token.len());
            let mut changed = token.clone();
            changed.replace_range(at..=at, &replacement);
            for other in [changed, token[..at].to_owned(), format!(" {token}"), noise] {
                if other != token {
                    prop_assert_ne!(sha256_hex(&other), hash.clone());
                }
            }
        }
    }
}
