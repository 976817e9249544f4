//! A validated email address: parsing is the only way to get one.

use std::fmt;

use unicode_normalization::UnicodeNormalization as _;

/// The longest address a mail server has to accept (RFC 5321 section 4.5.3.1.3, as a path).
const MAX_LEN: usize = 254;
/// The longest local part (RFC 5321 section 4.5.3.1.1).
const MAX_LOCAL_LEN: usize = 64;
/// The longest DNS label (RFC 1035).
const MAX_LABEL_LEN: usize = 63;

/// An email address as the user typed it (trimmed), with its case-folded form (for display
/// and search) and its look-alike key (for uniqueness).
///
/// Two addresses that a person reads as the same are the same account: equality compares the
/// look-alike key, so letter case, fullwidth forms, mathematical letters and other scripts'
/// homoglyphs (Cyrillic `е` for Latin `e`, dotless `ı` for `i`) make no second account.
#[derive(Clone)]
pub struct Email {
    address: String,
    normalized: String,
    key: String,
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
        Ok(Self::from_trusted(address.to_owned()))
    }

    /// Rebuilds an address that was validated before it was stored.
    pub fn from_trusted(address: String) -> Self {
        Self {
            normalized: address.to_lowercase(),
            key: lookalike_key(&address),
            address,
        }
    }

    /// The address as the user gave it, trimmed.
    pub fn as_str(&self) -> &str {
        &self.address
    }

    /// The case-folded form, for display and search.
    pub fn normalized(&self) -> &str {
        &self.normalized
    }

    /// The form that makes an address unique: equal for every address a person reads as this
    /// one. Also the account that abuse limits count, so look-alikes share one budget.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// NFKC (fullwidth and mathematical letters become plain ones), case folding, then the
/// confusable skeleton of Unicode TR39 (homoglyphs of other scripts become their Latin
/// prototype), folded again because some prototypes are capitals (`0` becomes `O`).
///
/// The `rekey_emails` migration holds a frozen copy of this function, as a migration must;
/// a test in `tests/api/migrations.rs` checks that the two agree.
pub fn lookalike_key(address: &str) -> String {
    let folded = address.nfkc().collect::<String>().to_lowercase();
    unicode_security::skeleton(&folded)
        .collect::<String>()
        .to_lowercase()
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
        self.key == other.key
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
    fn look_alike_addresses_are_one_account() {
        let kelly = Email::parse("kelly@example.com").unwrap();
        for twin in [
            "KELLY@example.com",
            "\u{ff4b}elly@example.com",  // fullwidth k
            "k\u{435}lly@example.com",   // Cyrillic e
            "\u{1d424}elly@example.com", // mathematical bold k
            "kel\u{217c}y@example.com",  // small roman numeral fifty
        ] {
            let twin = Email::parse(twin).unwrap();
            assert_eq!(twin, kelly, "{twin:?}");
            assert_eq!(twin.key(), kelly.key());
        }
        assert_eq!(
            Email::parse("\u{131}kelly@example.com").unwrap(),
            Email::parse("ikelly@example.com").unwrap()
        );
        assert_ne!(kelly, Email::parse("kelli@example.com").unwrap());
        assert_ne!(kelly, Email::parse("kelly@example.org").unwrap());
    }

    #[test]
    fn the_address_itself_is_kept_as_typed() {
        let twin = Email::parse(" k\u{435}lly@Example.com ").unwrap();
        assert_eq!(twin.as_str(), "k\u{435}lly@Example.com");
        assert_eq!(twin.normalized(), "k\u{435}lly@example.com");
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

    mod properties {
        use proptest::prelude::*;

        use super::*;
        use crate::properties::config;

        /// Letters, digits and the specials, in ASCII; dotted runs of them.
        const LOCAL: &str = "[a-z0-9_+'=-]{1,12}(\\.[a-z0-9]{1,6}){0,2}";
        const DOMAIN: &str = "([a-z0-9]{1,10}\\.){1,3}[a-z]{2,6}";

        /// A twin of an ASCII letter that a person reads as the same letter: its capital,
        /// fullwidth or mathematical bold form, or a Cyrillic homoglyph where there is one.
        fn twin(c: char, pick: u8) -> char {
            let offset = u32::from(c) - u32::from('a');
            let cyrillic = match c {
                'a' => Some('\u{430}'),
                'c' => Some('\u{441}'),
                'e' => Some('\u{435}'),
                'o' => Some('\u{43e}'),
                'p' => Some('\u{440}'),
                'x' => Some('\u{445}'),
                _ => None,
            };
            let forms = [
                Some(c),
                Some(c.to_ascii_uppercase()),
                char::from_u32(0xff41 + offset),
                char::from_u32(0x1d41a + offset),
                cyrillic,
            ];
            forms[usize::from(pick) % forms.len()].unwrap_or(c)
        }

        fn address() -> impl Strategy<Value = String> {
            (LOCAL, DOMAIN).prop_map(|(local, domain)| format!("{local}@{domain}"))
        }

        /// Strings that are nearly addresses: any characters where an address has its parts.
        fn near_address() -> impl Strategy<Value = String> {
            let part = prop_oneof![
                "\\PC{0,20}",
                "[a-z.@\\-]{0,20}",
                "[\\s\\S]{0,5}",
                LOCAL.prop_map(String::from)
            ];
            (
                part.clone(),
                prop::option::of("@"),
                part,
                prop::option::of(DOMAIN),
            )
                .prop_map(|(a, at, b, domain)| {
                    format!(
                        "{a}{}{b}{}",
                        at.unwrap_or_default(),
                        domain.unwrap_or_default()
                    )
                })
        }

        proptest! {
            #![proptest_config(config(512))]

            #[test]
            fn parsing_anything_keeps_what_was_typed_within_the_limits(
                input in prop_oneof![any::<String>(), near_address()]
            ) {
                if let Ok(email) = Email::parse(&input) {
                    prop_assert_eq!(email.as_str(), input.trim());
                    prop_assert!(email.as_str().len() <= MAX_LEN);
                    let (local, domain) = email.as_str().rsplit_once('@').unwrap();
                    prop_assert!(!local.is_empty() && local.len() <= MAX_LOCAL_LEN);
                    prop_assert!(domain.contains('.') && domain.is_ascii());
                    prop_assert!(!email.as_str().chars().any(char::is_control));
                }
            }

            #[test]
            fn an_address_parses_again_to_itself(address in address(), pad in "[ \t\n]{0,3}") {
                let email = Email::parse(&format!("{pad}{address}{pad}")).unwrap();
                let again = Email::parse(email.as_str()).unwrap();
                prop_assert_eq!(again.as_str(), email.as_str());
                prop_assert_eq!(again.normalized(), email.normalized());
                prop_assert_eq!(again.key(), email.key());
                let trusted = Email::from_trusted(email.as_str().to_owned());
                prop_assert_eq!(trusted.key(), email.key());
            }

            #[test]
            fn normalising_is_idempotent_and_keeps_the_key(
                input in prop_oneof![address(), near_address(), any::<String>()]
            ) {
                let Ok(email) = Email::parse(&input) else { return Ok(()) };
                let normalized = Email::from_trusted(email.normalized().to_owned());
                prop_assert_eq!(normalized.normalized(), email.normalized());
                // Not `lookalike_key(key) == key`: keys are only ever computed from addresses,
                // and TR39's prototypes are not all NFKC-stable (`%` becomes `°/₀`).
                prop_assert_eq!(normalized.key(), email.key());
            }

            #[test]
            fn look_alikes_of_an_address_are_one_account(
                local in "[a-z]{1,12}",
                domain in DOMAIN,
                picks in prop::collection::vec(any::<u8>(), 12),
                upper_domain in any::<bool>(),
            ) {
                let plain = Email::parse(&format!("{local}@{domain}")).unwrap();
                let twin_local: String =
                    local.chars().zip(&picks).map(|(c, pick)| twin(c, *pick)).collect();
                let twin_domain =
                    if upper_domain { domain.to_ascii_uppercase() } else { domain.clone() };
                let twin = Email::parse(&format!("{twin_local}@{twin_domain}")).unwrap();
                prop_assert_eq!(twin.key(), plain.key(), "{:?}", twin);
                prop_assert_eq!(&twin, &plain);
            }

            /// Letters that no other letter or pair of letters looks like (not `l`, `1`, `rn`
            /// and `m`, `cl` and `d`, `vv` and `w`...): addresses of them differ as they read.
            #[test]
            fn addresses_that_read_differently_are_different_accounts(
                a in "[abefghjkpqstxyz]{1,8}@[abefghjkpqstxyz]{1,8}\\.[abefghjkpqstxyz]{2,3}",
                b in "[abefghjkpqstxyz]{1,8}@[abefghjkpqstxyz]{1,8}\\.[abefghjkpqstxyz]{2,3}",
            ) {
                prop_assume!(a != b);
                prop_assert_ne!(Email::parse(&a).unwrap(), Email::parse(&b).unwrap());
            }
        }
    }
}
