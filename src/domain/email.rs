//! A validated email address: parsing is the only way to get one.

use std::fmt;

/// The longest address a mail server has to accept (RFC 5321 section 4.5.3.1.3, as a path).
const MAX_LEN: usize = 254;
/// The longest local part (RFC 5321 section 4.5.3.1.1).
const MAX_LOCAL_LEN: usize = 64;
/// The longest DNS label (RFC 1035).
const MAX_LABEL_LEN: usize = 63;

/// An email address as the user typed it (trimmed), with the normalised form used for uniqueness.
///
/// Two addresses that differ only in letter case are the same account, so equality compares
/// the normalised form.
#[derive(Clone)]
pub struct Email {
    address: String,
    normalized: String,
}

/// Why a string is not an acceptable email address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    #[error("value is not a valid email address: it must look like name@example.com")]
    Malformed,
    #[error("value is not a valid email address: it is longer than 254 characters")]
    TooLong,
}

impl Email {
    /// Parses `input`: trims surrounding white space and checks the address's shape.
    ///
    /// Deliberately stricter than RFC 5322 (no quoted local parts, comments or IP literals, an
    /// ASCII domain with a dot): what real sign-ups use, with no room for look-alike tricks.
    ///
    /// # Errors
    /// [`EmailError`] naming what is wrong.
    pub fn parse(input: &str) -> Result<Self, EmailError> {
        let address = input.trim();
        if address.len() > MAX_LEN {
            return Err(EmailError::TooLong);
        }
        let (local, domain) = address.rsplit_once('@').ok_or(EmailError::Malformed)?;
        if !valid_local_part(local) || !valid_domain(domain) {
            return Err(EmailError::Malformed);
        }
        Ok(Self {
            address: address.to_owned(),
            normalized: address.to_lowercase(),
        })
    }

    /// Rebuilds an address that was validated before it was stored.
    pub fn from_trusted(address: String) -> Self {
        let normalized = address.to_lowercase();
        Self {
            address,
            normalized,
        }
    }

    /// The address as the user gave it, trimmed.
    pub fn as_str(&self) -> &str {
        &self.address
    }

    /// The case-folded form that makes an address unique.
    pub fn normalized(&self) -> &str {
        &self.normalized
    }
}

fn valid_local_part(local: &str) -> bool {
    const SPECIALS: &str = "!#$%&'*+/=?^_`{|}~-";
    !local.is_empty()
        && local.len() <= MAX_LOCAL_LEN
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local
            .chars()
            .all(|c| c == '.' || c.is_alphanumeric() || SPECIALS.contains(c))
}

fn valid_domain(domain: &str) -> bool {
    let labels: Vec<&str> = domain.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= MAX_LABEL_LEN
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        && labels
            .last()
            .is_some_and(|tld| !tld.chars().all(|c| c.is_ascii_digit()))
}

impl PartialEq for Email {
    fn eq(&self, other: &Self) -> bool {
        self.normalized == other.normalized
    }
}

impl Eq for Email {}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Email").field(&self.address).finish()
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_trimmed_and_compared_without_case() {
        let a = Email::parse("  Alice@Example.com ").unwrap();
        let b = Email::parse("alice@example.com").unwrap();
        assert_eq!(a.as_str(), "Alice@Example.com");
        assert_eq!(a.normalized(), "alice@example.com");
        assert_eq!(a, b);
    }

    #[test]
    fn common_real_addresses_are_accepted() {
        for ok in [
            "a@b.co",
            "first.last+tag@sub.example.org",
            "o'brien@example.ie",
            "josé@example.es",
            "x_y-z@a-b.example",
        ] {
            assert!(Email::parse(ok).is_ok(), "{ok} should be accepted");
        }
    }

    #[test]
    fn malformed_addresses_are_rejected() {
        for bad in [
            "",
            "not-an-email",
            "@example.com",
            "alice@",
            "alice@localhost",
            "alice@example..com",
            "alice@-example.com",
            "alice@example.123",
            ".alice@example.com",
            "al..ice@example.com",
            "al ice@example.com",
            "alice@exa mple.com",
            "alice@exämple.com",
            "\"alice\"@example.com",
            "alice@[127.0.0.1]",
            "alice\u{0}@example.com",
            "alice\u{202e}@example.com",
            "a\u{301}lice@example.com",
        ] {
            assert_eq!(
                Email::parse(bad).unwrap_err(),
                EmailError::Malformed,
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn overlong_addresses_are_rejected() {
        let long = format!("{}@example.com", "a".repeat(250));
        assert_eq!(Email::parse(&long).unwrap_err(), EmailError::TooLong);
        let long_local = format!("{}@example.com", "a".repeat(65));
        assert_eq!(
            Email::parse(&long_local).unwrap_err(),
            EmailError::Malformed
        );
    }
}
