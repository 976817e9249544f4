//! The rules a new password must pass besides its shape, which need to know the account: not
//! among the most common passwords, not the account's address or its local part, and, when
//! `password_min_score` asks for it, a zxcvbn strength estimate fed with the address and name.

use std::collections::HashSet;
use std::sync::LazyLock;

use super::{Password, PasswordError};
use crate::domain::{Email, FullName};

/// The most common passwords, lowercased, most common first: see `common-passwords.LICENSE`
/// for the source. Compiled into the binary, so checking needs no file or network.
static COMMON: LazyLock<HashSet<&'static str>> =
    LazyLock::new(|| include_str!("common-passwords.txt").lines().collect());

/// The highest zxcvbn score.
pub const MAX_SCORE: u8 = 4;

/// The configurable part of the password rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PasswordPolicy {
    /// The zxcvbn score (0 to 4) a new password must reach; 0 turns the estimate off.
    pub min_score: u8,
}

impl PasswordPolicy {
    /// Builds the common-password set now, so that the first registration does not pay for it.
    pub fn warm_up() {
        LazyLock::force(&COMMON);
    }

    /// Checks `password` as the new password of the account with `email` and `full_name`.
    /// Letter case is ignored throughout.
    ///
    /// # Errors
    /// [`PasswordError::Common`], [`PasswordError::SameAsEmail`] or
    /// [`PasswordError::Guessable`] with zxcvbn's advice.
    pub fn check(
        &self,
        password: &Password,
        email: &Email,
        full_name: Option<&FullName>,
    ) -> Result<(), PasswordError> {
        let candidate = password.expose().to_lowercase();
        if COMMON.contains(candidate.as_str()) {
            return Err(PasswordError::Common);
        }
        let address = email.as_str().to_lowercase();
        let local = address
            .rsplit_once('@')
            .map_or(address.as_str(), |(local, _)| local);
        if candidate == address || candidate == local {
            return Err(PasswordError::SameAsEmail);
        }
        if self.min_score == 0 {
            return Ok(());
        }
        let name = full_name
            .map(|n| n.as_str().to_lowercase())
            .unwrap_or_default();
        // The name whole, as written and run together, besides its words: zxcvbn matches
        // inputs as dictionary words, and a password that is the name with its spaces or
        // hyphens is otherwise read as several words joined by a guessable separator.
        let joined: String = name.chars().filter(|c| c.is_alphanumeric()).collect();
        let mut inputs = vec![address.as_str(), local, name.as_str(), joined.as_str()];
        inputs.extend(name.split(|c: char| !c.is_alphanumeric()));
        inputs.retain(|input| !input.is_empty());
        let estimate = zxcvbn::zxcvbn(password.expose(), &inputs);
        if u8::from(estimate.score()) >= self.min_score {
            return Ok(());
        }
        let advice: Vec<String> = estimate
            .feedback()
            .map(|feedback| {
                feedback
                    .warning()
                    .map(|w| w.to_string())
                    .into_iter()
                    .chain(feedback.suggestions().iter().map(ToString::to_string))
                    .collect()
            })
            .unwrap_or_default();
        Err(PasswordError::Guessable(if advice.is_empty() {
            "Add another word or two. Uncommon words are better.".to_owned()
        } else {
            advice.join(" ")
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(
        min_score: u8,
        password: &str,
        email: &str,
        name: Option<&str>,
    ) -> Result<(), PasswordError> {
        let name = name.map(|n| FullName::parse(n).unwrap());
        PasswordPolicy { min_score }.check(
            &Password::parse(password).unwrap(),
            &Email::parse(email).unwrap(),
            name.as_ref(),
        )
    }

    #[test]
    fn the_common_list_is_large_and_holds_the_usual_suspects_in_any_case() {
        assert!(COMMON.len() >= 10_000, "{} entries", COMMON.len());
        assert!(COMMON.iter().filter(|p| p.chars().count() >= 8).count() >= 10_000);
        for common in [
            "password1",
            "12345678",
            "PASSWORD1",
            "Password1",
            "iloveyou1",
        ] {
            assert_eq!(
                check(0, common, "ann@example.com", None),
                Err(PasswordError::Common),
                "{common}"
            );
        }
        assert_eq!(
            check(0, "vivid-otter-cantilever", "ann@example.com", None),
            Ok(())
        );
    }

    #[test]
    fn the_address_and_its_local_part_are_refused_in_any_case() {
        for same in [
            "ann.smith@example.com",
            "ANN.SMITH@EXAMPLE.COM",
            "Ann.Smith",
        ] {
            assert_eq!(
                check(0, same, "Ann.Smith@Example.com", None),
                Err(PasswordError::SameAsEmail),
                "{same}"
            );
        }
        assert_eq!(
            check(0, "ann.smith2@example.com", "ann.smith@example.com", None),
            Ok(())
        );
    }

    #[test]
    fn the_score_is_checked_only_when_asked_for_and_knows_the_account() {
        // Not on the common list, but a keyboard walk and a name: weak to zxcvbn.
        assert_eq!(check(0, "qwertyuiopasdf", "ann@example.com", None), Ok(()));
        let weak = check(3, "qwertyuiopasdf", "ann@example.com", None);
        assert!(
            matches!(&weak, Err(PasswordError::Guessable(advice)) if !advice.is_empty()),
            "{weak:?}"
        );
        // The user's own name makes a password weaker than it looks.
        assert!(check(4, "zanzibarquill99", "x@example.com", None).is_ok());
        assert!(
            check(
                4,
                "zanzibarquill99",
                "x@example.com",
                Some("Zanzibar Quill")
            )
            .is_err()
        );
        // So does the name itself, as written, with its spaces and hyphens, in any case.
        for (name, password) in [
            ("Zanzibar Quill", "Zanzibar Quill"),
            ("Zanzibar Quill", "zanzibar quill!"),
            ("Margaret Thistlewood", "MargaretThistlewood"),
            ("Jean-Luc Picardeau", "Jean-Luc Picardeau"),
        ] {
            assert!(
                check(3, password, "x@example.com", None).is_ok(),
                "{password}"
            );
            assert!(
                check(3, password, "x@example.com", Some(name)).is_err(),
                "{password} for {name}"
            );
        }
        assert_eq!(
            check(
                MAX_SCORE,
                "correct-horse-battery-staple-vortex",
                "ann@example.com",
                None
            ),
            Ok(())
        );
    }
}
