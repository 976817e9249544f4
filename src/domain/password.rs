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

    mod properties {
        use proptest::prelude::*;

        use super::*;
        use crate::domain::{Email, FullName};
        use crate::properties::config;

        /// Mostly printable text of about the lengths the limits sit at, in one-, two-, three-
        /// and four-byte characters, with a control character now and then.
        fn candidate() -> impl Strategy<Value = String> {
            prop_oneof![
                "[a-z0-9 ]{0,80}",
                "[a-zé€😀]{4,40}",
                "[a-z\\x00-\\x1f\\x7f\\u{85}]{6,12}",
                any::<String>(),
            ]
        }

        proptest! {
            #![proptest_config(config(512))]

            #[test]
            fn a_parsed_password_keeps_its_limits_and_is_kept_as_given(candidate in candidate()) {
                let expected = if candidate.chars().count() < MIN_CHARS {
                    Err(PasswordError::TooShort)
                } else if candidate.len() > MAX_BYTES {
                    Err(PasswordError::TooLong)
                } else if candidate.chars().any(char::is_control) {
                    Err(PasswordError::ControlCharacter)
                } else {
                    Ok(candidate.as_str())
                };
                let parsed = Password::parse(&candidate);
                prop_assert_eq!(parsed.as_ref().map(Password::expose).map_err(Clone::clone), expected);
                if let Ok(password) = parsed {
                    // bcrypt stops at a NUL and at 72 bytes: neither can cut a parsed password.
                    prop_assert!(!password.expose().contains('\0'));
                    prop_assert!(password.expose().len() <= MAX_BYTES);
                }
            }
        }

        proptest! {
            // zxcvbn takes milliseconds per password in a debug build.
            #![proptest_config(config(64))]

            #[test]
            fn the_policy_judges_any_password_without_failing(
                candidate in "\\PC{8,24}",
                local in "[a-z0-9]{1,10}",
                name in "\\PC{1,30}",
                min_score in 0..=MAX_SCORE,
            ) {
                let Ok(password) = Password::parse(&candidate) else { return Ok(()) };
                let email = Email::parse(&format!("{local}@example.com")).unwrap();
                let name = FullName::parse(&name).ok();
                let verdict = PasswordPolicy { min_score }.check(&password, &email, name.as_ref());
                if min_score == 0 {
                    prop_assert!(!matches!(verdict, Err(PasswordError::Guessable(_))));
                }
                let same = Password::parse(email.as_str()).unwrap_or(password);
                if same.expose() == email.as_str() {
                    prop_assert_eq!(
                        PasswordPolicy { min_score }.check(&same, &email, name.as_ref()),
                        Err(PasswordError::SameAsEmail)
                    );
                }
            }
        }
    }
}
