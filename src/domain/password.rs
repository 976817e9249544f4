//! Passwords and their hashes. Neither type can be printed, so neither can reach a log line.

mod policy;

use std::fmt;

pub use policy::{MAX_SCORE, PasswordPolicy};

/// The shortest password the policy accepts, in characters.
pub const MIN_CHARS: usize = 8;
/// The longest password bcrypt hashes whole, in bytes. Anything longer would be silently
/// truncated by the algorithm, so the policy refuses it instead.
pub const MAX_BYTES: usize = 72;

/// A new password that satisfies the policy. It has no `Debug` or `Display` on purpose.
pub struct Password(String);

/// Why a new password is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("must be at least 8 characters")]
    TooShort,
    #[error("must be at most 72 bytes (UTF-8)")]
    TooLong,
    #[error("must not contain control characters")]
    ControlCharacter,
    #[error("is one of the most commonly used passwords; choose another")]
    Common,
    #[error("must not be the email address or its local part")]
    SameAsEmail,
    /// Below `password_min_score`, with zxcvbn's advice.
    #[error("is too easy to guess: {0}")]
    Guessable(String),
}

impl Password {
    /// Checks a candidate against the policy: 8 characters to 72 bytes, no control characters
    /// (a NUL would end the key early inside bcrypt, making two passwords one).
    ///
    /// # Errors
    /// [`PasswordError`] naming the rule that failed.
    pub fn parse(candidate: &str) -> Result<Self, PasswordError> {
        if candidate.chars().count() < MIN_CHARS {
            return Err(PasswordError::TooShort);
        }
        if candidate.len() > MAX_BYTES {
            return Err(PasswordError::TooLong);
        }
        if candidate.chars().any(char::is_control) {
            return Err(PasswordError::ControlCharacter);
        }
        Ok(Self(candidate.to_owned()))
    }

    /// The secret, for a hasher.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A password hash in the hasher's own encoding (for bcrypt, the `$2b$...` string).
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash(String);

impl PasswordHash {
    /// Wraps an encoded hash, as produced by a hasher or read from storage.
    pub fn new(encoded: String) -> Self {
        Self(encoded)
    }

    /// The encoded hash, for a hasher or for storage.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_counts_characters_for_the_minimum_and_bytes_for_the_maximum() {
        assert_eq!(
            Password::parse("1234567").err(),
            Some(PasswordError::TooShort)
        );
        assert!(Password::parse("12345678").is_ok());
        // Eight characters, sixteen bytes: long enough.
        assert!(Password::parse("éééééééé").is_ok());
        assert!(Password::parse(&"x".repeat(72)).is_ok());
        assert_eq!(
            Password::parse(&"x".repeat(73)).err(),
            Some(PasswordError::TooLong)
        );
        // 37 two-byte characters: 74 bytes.
        assert_eq!(
            Password::parse(&"é".repeat(37)).err(),
            Some(PasswordError::TooLong)
        );
    }

    #[test]
    fn control_characters_are_refused() {
        assert_eq!(
            Password::parse("password\u{0}1").err(),
            Some(PasswordError::ControlCharacter)
        );
        assert_eq!(
            Password::parse("pass\nword1").err(),
            Some(PasswordError::ControlCharacter)
        );
    }

    #[test]
    fn hashes_never_print() {
        let hash = PasswordHash::new("$2b$12$secret".into());
        assert!(!format!("{hash:?}").contains("secret"));
    }
}
