//! Second factors: TOTP codes (RFC 6238), recovery codes, the pending second step of a login,
//! and passkeys as the core sees them (opaque credentials checked by an adapter).

use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};
use hmac::{Hmac, Mac as _};
use rand::{Rng as _, RngExt as _};
use sha1::Sha1;
use subtle::ConstantTimeEq as _;
use uuid::Uuid;

use super::UserId;
use super::secrets::{random_secret, sha256_hex};

/// The length of a TOTP step, in seconds (RFC 6238's default, and what every app assumes).
pub const TOTP_STEP_SECONDS: i64 = 30;
/// Steps accepted on either side of the current one, for clock skew and typing time.
pub const TOTP_SKEW_STEPS: i64 = 1;
/// Digits of a code.
const TOTP_DIGITS: u32 = 6;
/// Bytes of a secret: 160 bits, the size of an HMAC-SHA1 key that RFC 4226 recommends.
const TOTP_SECRET_BYTES: usize = 20;

/// How many recovery codes an enrolment hands out.
pub const RECOVERY_CODES: usize = 10;
/// Characters of a recovery code, without its dashes: 16 of 32 symbols, 80 random bits, so a
/// fast hash stores it safely.
const RECOVERY_CODE_CHARS: usize = 16;
/// RFC 4648's base32 alphabet, lowercase; no 0/1/8 to mistake for o/l/b.
const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// A second factor a user can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Factor {
    Totp,
    Passkey,
}

impl Factor {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Totp => "totp",
            Self::Passkey => "passkey",
        }
    }
}

/// What a user has besides the password.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Factors {
    /// A confirmed TOTP secret.
    pub totp: bool,
    pub passkeys: u32,
}

impl Factors {
    pub fn list(self) -> Vec<Factor> {
        let mut list = Vec::new();
        if self.totp {
            list.push(Factor::Totp);
        }
        if self.passkeys > 0 {
            list.push(Factor::Passkey);
        }
        list
    }
}

/// How a session's user proved who they are: the `amr` claim (RFC 8176) of its access tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Password,
    Otp,
    RecoveryCode,
    Webauthn,
}

impl AuthMethod {
    /// The `amr` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Password => "pwd",
            Self::Otp => "otp",
            Self::RecoveryCode => "recovery",
            Self::Webauthn => "webauthn",
        }
    }

    /// The method of an `amr` value.
    pub fn parse(value: &str) -> Option<Self> {
        [
            Self::Password,
            Self::Otp,
            Self::RecoveryCode,
            Self::Webauthn,
        ]
        .into_iter()
        .find(|method| method.as_str() == value)
    }
}

/// A TOTP secret, in the clear: only ever in memory, sealed at rest.
#[derive(Clone, PartialEq, Eq)]
pub struct TotpSecret(Vec<u8>);

impl TotpSecret {
    /// 160 bits from a cryptographically secure generator seeded by the operating system.
    pub fn generate() -> Self {
        let mut bytes = vec![0u8; TOTP_SECRET_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        Self(bytes)
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The secret as authenticator apps take it: RFC 4648 base32, uppercase, unpadded.
    pub fn base32(&self) -> String {
        base32(&self.0).to_ascii_uppercase()
    }

    /// The `otpauth://` URI an app scans: the account is `account` under `issuer`.
    pub fn otpauth_uri(&self, issuer: &str, account: &str) -> String {
        let label = format!("{}:{}", percent_encode(issuer), percent_encode(account));
        format!(
            "otpauth://totp/{label}?secret={}&issuer={}&algorithm=SHA1&digits={TOTP_DIGITS}&period={TOTP_STEP_SECONDS}",
            self.base32(),
            percent_encode(issuer),
        )
    }

    /// The code of time step `step` (RFC 4226's HOTP of the step counter).
    pub fn code_at(&self, step: i64) -> u32 {
        let mut mac =
            Hmac::<Sha1>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(&step.to_be_bytes());
        let digest = mac.finalize().into_bytes();
        let offset = usize::from(digest[digest.len() - 1] & 0x0f);
        let binary = u32::from_be_bytes([
            digest[offset] & 0x7f,
            digest[offset + 1],
            digest[offset + 2],
            digest[offset + 3],
        ]);
        binary % 10u32.pow(TOTP_DIGITS)
    }

    /// The step whose code `code` is, among the current step at `now` and the ones next to it,
    /// if any. Every candidate is compared, in constant time, whatever matches first.
    pub fn matching_step(&self, code: &TotpCode, now: DateTime<Utc>) -> Option<i64> {
        let current = totp_step(now);
        let mut found = None;
        for step in current - TOTP_SKEW_STEPS..=current + TOTP_SKEW_STEPS {
            let expected = format!(
                "{:0width$}",
                self.code_at(step),
                width = TOTP_DIGITS as usize
            );
            if bool::from(expected.as_bytes().ct_eq(code.0.as_bytes())) {
                found = Some(step);
            }
        }
        found
    }
}

impl fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpSecret(..)")
    }
}

/// The TOTP step that `at` falls in.
pub fn totp_step(at: DateTime<Utc>) -> i64 {
    at.timestamp().div_euclid(TOTP_STEP_SECONDS)
}

/// A code as typed: six digits (spaces, which apps show in the middle, are dropped).
#[derive(Clone, PartialEq, Eq)]
pub struct TotpCode(String);

impl TotpCode {
    /// `None` for anything but six ASCII digits.
    pub fn parse(raw: &str) -> Option<Self> {
        let digits: String = raw.chars().filter(|c| *c != ' ').collect();
        (digits.len() == TOTP_DIGITS as usize && digits.bytes().all(|b| b.is_ascii_digit()))
            .then_some(Self(digits))
    }
}

impl fmt::Debug for TotpCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpCode(..)")
    }
}

/// A user's TOTP factor as stored: the secret sealed, and the last step a code was accepted
/// for, so that no code is accepted twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TotpFactor {
    pub user_id: UserId,
    pub sealed_secret: Vec<u8>,
    /// `None` until a first code confirms the enrolment.
    pub confirmed_at: Option<DateTime<Utc>>,
    pub last_step: Option<i64>,
    /// Confirmed while the account's address was unverified: a password reset (which proves
    /// the address) removes it, since whoever registered the address first may have added it.
    pub added_unverified: bool,
}

/// The SHA-256 of a normalised recovery code, hex encoded: the only form that is stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecoveryCodeHash(pub String);

impl RecoveryCodeHash {
    /// The hash of a code as typed: case, spaces and dashes do not matter. `None` for what
    /// cannot be a code.
    pub fn of_typed(raw: &str) -> Option<Self> {
        let normal: String = raw
            .chars()
            .filter(|c| !matches!(c, '-' | ' '))
            .map(|c| c.to_ascii_lowercase())
            .collect();
        (normal.len() == RECOVERY_CODE_CHARS && normal.bytes().all(|b| BASE32.contains(&b)))
            .then(|| Self(sha256_hex(&normal)))
    }
}

/// A fresh set of recovery codes: the codes, shown once, and their hashes, stored.
pub struct RecoveryCodes {
    pub codes: Vec<String>,
    pub hashes: Vec<RecoveryCodeHash>,
}

impl RecoveryCodes {
    pub fn generate() -> Self {
        let mut rng = rand::rng();
        let codes: Vec<String> = (0..RECOVERY_CODES)
            .map(|_| {
                let chars: String = (0..RECOVERY_CODE_CHARS)
                    .map(|_| char::from(BASE32[rng.random_range(0..BASE32.len())]))
                    .collect();
                format!(
                    "{}-{}-{}-{}",
                    &chars[0..4],
                    &chars[4..8],
                    &chars[8..12],
                    &chars[12..16]
                )
            })
            .collect();
        let hashes = codes
            .iter()
            .map(|code| RecoveryCodeHash::of_typed(code).expect("a generated code is well formed"))
            .collect();
        Self { codes, hashes }
    }
}

impl fmt::Debug for RecoveryCodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecoveryCodes").finish_non_exhaustive()
    }
}

/// The SHA-256 of an `mfa_token`: the only form that is stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MfaTokenHash(pub String);

impl MfaTokenHash {
    pub fn of(token: &str) -> Self {
        Self(sha256_hex(token))
    }
}

/// The second step of a login, pending: a right password was given, a code is owed.
#[derive(Clone, PartialEq)]
pub struct NewMfaChallenge {
    /// The `mfa_token` for the client, never stored.
    pub secret: String,
    pub hash: MfaTokenHash,
    pub user_id: UserId,
    /// The user's credential version at the password step: a password change or a
    /// deactivation in between voids the challenge.
    pub credential_version: i64,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl NewMfaChallenge {
    pub fn generate(
        user_id: UserId,
        credential_version: i64,
        now: DateTime<Utc>,
        ttl: TimeDelta,
    ) -> Self {
        let secret = random_secret();
        Self {
            hash: MfaTokenHash::of(&secret),
            secret,
            user_id,
            credential_version,
            created_at: now,
            expires_at: now + ttl,
        }
    }
}

impl fmt::Debug for NewMfaChallenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewMfaChallenge")
            .field("user_id", &self.user_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A stored challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MfaChallenge {
    pub user_id: UserId,
    pub credential_version: i64,
    pub expires_at: DateTime<Utc>,
    /// Wrong codes given so far.
    pub failures: u32,
    pub spent_at: Option<DateTime<Utc>>,
}

impl MfaChallenge {
    pub fn is_open(&self, now: DateTime<Utc>) -> bool {
        self.spent_at.is_none() && now < self.expires_at
    }
}

/// A passkey of a user, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passkey {
    pub id: Uuid,
    pub user_id: UserId,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    /// The WebAuthn credential id, as the authenticator names it.
    pub credential_id: Vec<u8>,
    /// The credential as the WebAuthn adapter stores it (public key, counter): opaque here.
    pub credential: String,
    /// The WebAuthn user handle under which it was made; one per user.
    pub user_handle: Uuid,
    /// Added while the account's address was unverified: a password reset removes it.
    pub added_unverified: bool,
}

impl Passkey {
    /// How a notice names it: `passkey "Work laptop"`.
    pub fn described(&self) -> String {
        format!("passkey \"{}\"", self.name)
    }
}

/// How a notice names a TOTP factor.
pub const TOTP_DESCRIBED: &str = "TOTP (authenticator app)";

/// Which second factors a change removes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FactorRemoval {
    /// The TOTP factor with its recovery codes, and an enrolment not confirmed yet.
    pub totp: bool,
    /// These passkeys, by id.
    pub passkeys: Vec<Uuid>,
}

impl FactorRemoval {
    pub fn is_empty(&self) -> bool {
        !self.totp && self.passkeys.is_empty()
    }

    /// Whether both name the same factors, in whatever order.
    pub fn same_as(&self, other: &Self) -> bool {
        let sorted = |ids: &[Uuid]| {
            let mut ids = ids.to_vec();
            ids.sort_unstable();
            ids
        };
        self.totp == other.totp && sorted(&self.passkeys) == sorted(&other.passkeys)
    }
}

/// Passkeys one user may hold: enough for every device, and a bound on what one account can
/// store (and on the credentials each new registration's options list).
pub const MAX_PASSKEYS: usize = 20;

/// The longest passkey name, in characters.
pub const PASSKEY_NAME_MAX_CHARS: usize = 64;

/// A passkey's name as given: no control characters, at most 64 characters, then trimmed; an
/// empty or blank one is `None` (the service picks a default). The rules are the API
/// document's (JSON Schema's `maxLength` counts the name as sent, and its `\s` counts U+FEFF as
/// white space), so that what the document allows is what is taken.
pub fn passkey_name(raw: &str) -> Result<Option<String>, &'static str> {
    if raw.chars().any(char::is_control) {
        return Err("must not contain control characters");
    }
    if raw.chars().count() > PASSKEY_NAME_MAX_CHARS {
        return Err("must be at most 64 characters");
    }
    let name = raw.trim_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
    Ok((!name.is_empty()).then(|| name.to_owned()))
}

/// What a WebAuthn ceremony is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CeremonyKind {
    Registration,
    Authentication,
}

impl CeremonyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Registration => "registration",
            Self::Authentication => "authentication",
        }
    }
}

/// A WebAuthn ceremony in progress, kept in storage so that any instance can finish it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ceremony {
    /// The challenge the browser signs, as it appears in its answer: the key to find it by.
    pub challenge: String,
    pub kind: CeremonyKind,
    /// The registering user; `None` for a sign-in, where the passkey names the user.
    pub user_id: Option<UserId>,
    /// The adapter's state, opaque here.
    pub state: String,
    pub expires_at: DateTime<Utc>,
}

fn base32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(BASE32[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(BASE32[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

/// Percent-encodes all but RFC 3986's unreserved characters, for the `otpauth` label.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'@') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone as _;

    use super::*;

    /// RFC 6238, appendix B: the SHA-1 secret, times and 8-digit codes (the last 6 digits are
    /// the 6-digit code).
    const RFC_SECRET: &[u8] = b"12345678901234567890";
    const RFC_VECTORS: [(i64, u32); 6] = [
        (59, 94_287_082),
        (1_111_111_109, 7_081_804),
        (1_111_111_111, 14_050_471),
        (1_234_567_890, 89_005_924),
        (2_000_000_000, 69_279_037),
        (20_000_000_000, 65_353_130),
    ];

    fn at(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(seconds, 0).unwrap()
    }

    fn code(secret: &TotpSecret, at_time: DateTime<Utc>) -> TotpCode {
        TotpCode::parse(&format!("{:06}", secret.code_at(totp_step(at_time)))).unwrap()
    }

    #[test]
    fn codes_match_the_test_vectors_of_rfc_6238() {
        let secret = TotpSecret::from_bytes(RFC_SECRET.to_vec());
        for (time, eight_digits) in RFC_VECTORS {
            assert_eq!(
                secret.code_at(totp_step(at(time))),
                eight_digits % 1_000_000
            );
        }
    }

    #[test]
    fn the_previous_and_the_next_step_are_accepted_and_no_further() {
        let secret = TotpSecret::generate();
        let now = at(1_800_000_000);
        let step = totp_step(now);
        for offset in -1..=1 {
            let typed = code(&secret, now + TimeDelta::seconds(30 * offset));
            assert_eq!(secret.matching_step(&typed, now), Some(step + offset));
        }
        for offset in [-2, 2] {
            let typed = code(&secret, now + TimeDelta::seconds(30 * offset));
            let other = secret.matching_step(&typed, now);
            // A far code could equal a near one by chance (one in a million); then it is that one.
            assert!(other.is_none() || other.is_some_and(|s| (s - step).abs() <= 1));
        }
    }

    #[test]
    fn codes_are_six_digits_and_nothing_else() {
        assert!(TotpCode::parse("123456").is_some());
        assert!(TotpCode::parse("123 456").is_some());
        for bad in ["12345", "1234567", "12345a", "", "１２３４５６", "123456\n"] {
            assert!(TotpCode::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn the_base32_secret_and_uri_are_what_apps_expect() {
        let secret = TotpSecret::from_bytes(RFC_SECRET.to_vec());
        assert_eq!(secret.base32(), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        let uri = secret.otpauth_uri("Portcullis", "ann+x@example.com");
        assert_eq!(
            uri,
            "otpauth://totp/Portcullis:ann%2Bx@example.com?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\
             &issuer=Portcullis&algorithm=SHA1&digits=6&period=30"
        );
        assert_eq!(TotpSecret::generate().base32().len(), 32);
        assert!(!format!("{secret:?}").contains("GEZ"));
    }

    #[test]
    fn recovery_codes_are_ten_distinct_80_bit_codes_stored_as_hashes() {
        let set = RecoveryCodes::generate();
        assert_eq!(set.codes.len(), 10);
        let distinct: std::collections::HashSet<_> = set.codes.iter().collect();
        assert_eq!(distinct.len(), 10);
        for (code, hash) in set.codes.iter().zip(&set.hashes) {
            assert_eq!(code.len(), 19);
            assert_eq!(RecoveryCodeHash::of_typed(code).as_ref(), Some(hash));
            let sloppy = code.to_uppercase().replace('-', " ");
            assert_eq!(RecoveryCodeHash::of_typed(&sloppy).as_ref(), Some(hash));
            assert!(!hash.0.contains(&code.replace('-', "")));
        }
        assert!(RecoveryCodeHash::of_typed("not-a-code").is_none());
        assert!(RecoveryCodeHash::of_typed("aaaa-aaaa-aaaa-aaa1").is_none());
    }

    #[test]
    fn amr_values_round_trip() {
        for method in [
            AuthMethod::Password,
            AuthMethod::Otp,
            AuthMethod::RecoveryCode,
            AuthMethod::Webauthn,
        ] {
            assert_eq!(AuthMethod::parse(method.as_str()), Some(method));
        }
        assert_eq!(AuthMethod::parse("mfa"), None);
    }

    #[test]
    fn challenges_are_open_until_spent_or_expired() {
        let now = at(1_800_000_000);
        let new = NewMfaChallenge::generate(UserId(1), 0, now, TimeDelta::minutes(5));
        assert_eq!(new.hash, MfaTokenHash::of(&new.secret));
        assert!(!format!("{new:?}").contains(&new.secret));
        let mut stored = MfaChallenge {
            user_id: UserId(1),
            credential_version: 0,
            expires_at: new.expires_at,
            failures: 0,
            spent_at: None,
        };
        assert!(stored.is_open(now + TimeDelta::seconds(299)));
        assert!(!stored.is_open(now + TimeDelta::minutes(5)));
        stored.spent_at = Some(now);
        assert!(!stored.is_open(now));
    }

    #[test]
    fn passkey_names_are_trimmed_and_bounded() {
        assert_eq!(passkey_name("  Laptop "), Ok(Some("Laptop".into())));
        assert_eq!(passkey_name("   "), Ok(None));
        assert!(passkey_name("a\u{0}b").is_err());
        assert!(passkey_name(&"x".repeat(65)).is_err());
        // As the document counts: the name as sent, before trimming; U+FEFF is white space.
        assert!(passkey_name(&format!("{} ", "x".repeat(64))).is_err());
        assert_eq!(passkey_name("\u{feff} "), Ok(None));
        assert_eq!(passkey_name(&"é".repeat(64)).map(|n| n.is_some()), Ok(true));
    }

    mod properties {
        use proptest::prelude::*;
        use totp_rs::{Algorithm, Builder, Secret};

        use super::*;
        use crate::properties::config;

        /// Times from 1970 to 2100.
        const TIMES: std::ops::Range<i64> = 0..4_102_444_800;

        fn secret() -> impl Strategy<Value = TotpSecret> {
            prop::collection::vec(any::<u8>(), 1..64).prop_map(TotpSecret::from_bytes)
        }

        fn typed(code: u32) -> TotpCode {
            TotpCode::parse(&format!("{code:06}")).unwrap()
        }

        proptest! {
            #![proptest_config(config(512))]

            /// totp-rs is an independent RFC 6238 implementation, and it reads the secret from
            /// the base32 an app is given: the two agree on the secret and on every code.
            #[test]
            fn codes_and_the_base32_secret_are_what_another_implementation_computes(
                secret in secret(),
                time in TIMES,
            ) {
                let decoded = Secret::try_from_base32(secret.base32()).unwrap();
                prop_assert_eq!(decoded.as_ref(), secret.as_bytes());
                let app = Builder::new()
                    .with_algorithm(Algorithm::SHA1)
                    .with_digits(6)
                    .with_step_duration(30)
                    .with_secret(decoded)
                    .build_noncompliant();
                let ours = format!("{:06}", secret.code_at(totp_step(at(time))));
                prop_assert_eq!(ours, app.generate(time.cast_unsigned()).to_string());
            }

            #[test]
            fn a_code_is_accepted_only_within_one_step_of_now(
                secret in secret(),
                time in TIMES,
                offset in -4i64..=4,
            ) {
                let now = at(time);
                let step = totp_step(now);
                let code = secret.code_at(step + offset);
                let matched = secret.matching_step(&typed(code), now);
                if offset.abs() <= TOTP_SKEW_STEPS {
                    prop_assert!(matched.is_some());
                }
                // Another step of the window may have the same code by chance (one in a
                // million): then that step is the one matched, never one outside the window.
                if let Some(matched) = matched {
                    prop_assert!((matched - step).abs() <= TOTP_SKEW_STEPS);
                    prop_assert_eq!(secret.code_at(matched), code);
                }
            }

            #[test]
            fn a_typed_code_is_six_digits_with_any_spaces(
                raw in prop_oneof![any::<String>(), "[0-9 ]{0,10}", "[0-9٠-٩０-９a]{6}"]
            ) {
                let digits: String = raw.chars().filter(|c| *c != ' ').collect();
                let valid = digits.len() == 6 && digits.bytes().all(|b| b.is_ascii_digit());
                prop_assert_eq!(TotpCode::parse(&raw).is_some(), valid);
            }

            #[test]
            fn a_recovery_code_is_found_however_it_is_typed_and_only_so(
                chars in "[a-z2-7]{16}",
                upper in prop::collection::vec(any::<bool>(), 16),
                separators in prop::collection::vec("[- ]{0,2}", 16),
                changed in 0usize..16,
                replacement in "[a-z2-7]",
            ) {
                let canonical = RecoveryCodeHash::of_typed(&chars).unwrap();
                let sloppy: String = chars
                    .chars()
                    .zip(&upper)
                    .zip(&separators)
                    .map(|((c, up), sep)| {
                        let c = if *up { c.to_ascii_uppercase() } else { c };
                        format!("{sep}{c}")
                    })
                    .collect();
                prop_assert_eq!(RecoveryCodeHash::of_typed(&sloppy), Some(canonical.clone()));
                let mut other = chars.clone();
                other.replace_range(changed..=changed, &replacement);
                if other != chars {
                    prop_assert_ne!(RecoveryCodeHash::of_typed(&other), Some(canonical));
                }
            }

            #[test]
            fn anything_typed_as_a_recovery_code_is_a_code_or_nothing(raw in any::<String>()) {
                let normal: String = raw
                    .chars()
                    .filter(|c| !matches!(c, '-' | ' '))
                    .map(|c| c.to_ascii_lowercase())
                    .collect();
                prop_assert_eq!(
                    RecoveryCodeHash::of_typed(&raw),
                    RecoveryCodeHash::of_typed(&normal)
                );
                if RecoveryCodeHash::of_typed(&raw).is_some() {
                    prop_assert!(normal.len() == 16 && normal.bytes().all(|b| BASE32.contains(&b)));
                }
            }

            /// The label of an `otpauth` URI survives any issuer and account: each decodes back
            /// to what it was, and nothing in it can end the label or start the query.
            #[test]
            fn the_otpauth_label_encodes_any_issuer_and_account(
                issuer in any::<String>(),
                account in any::<String>(),
            ) {
                let uri = TotpSecret::from_bytes(vec![1; 20]).otpauth_uri(&issuer, &account);
                let label = uri
                    .strip_prefix("otpauth://totp/")
                    .and_then(|rest| rest.split_once('?'))
                    .map(|(label, _)| label)
                    .unwrap();
                let (encoded_issuer, encoded_account) = label.split_once(':').unwrap();
                prop_assert_eq!(percent_decode(encoded_issuer), issuer);
                prop_assert_eq!(percent_decode(encoded_account), account);
            }

            #[test]
            fn a_passkey_name_is_bounded_trimmed_and_stable(raw in prop_oneof![
                any::<String>(), "[ \\u{feff}a-z\\t]{0,70}", "\\PC{60,70}"
            ]) {
                if let Ok(Some(name)) = passkey_name(&raw) {
                    prop_assert!(!name.is_empty() && name.chars().count() <= PASSKEY_NAME_MAX_CHARS);
                    prop_assert!(!name.chars().any(char::is_control));
                    prop_assert_eq!(passkey_name(&name), Ok(Some(name.clone())));
                }
            }
        }

        /// Decodes `%XX` escapes; the label is ASCII, so anything else is kept as it is.
        fn percent_decode(text: &str) -> String {
            let bytes = text.as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'%' {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                    out.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 3;
                } else {
                    out.push(bytes[i]);
                    i += 1;
                }
            }
            String::from_utf8(out).unwrap()
        }
    }
}
