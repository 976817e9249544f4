//! Asymmetric signing keys for access tokens, and the rules of their lifecycle.
//!
//! A key is `next` (published, not signing yet), `current` (signing), `previous` (published,
//! verifying until its last token has expired) or `retired` (neither). The rules here are pure:
//! given the keys and the time, they say which key signs, which are published, and which
//! moves are due; [`crate::domain::service::SigningKeys`] carries them out on the ports.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, TimeDelta, Utc};

/// The asymmetric JOSE algorithms Portcullis signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    /// Ed25519 (RFC 8037).
    EdDsa,
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, for relying parties that know no other (OpenID Connect
    /// makes it the one algorithm every provider must offer).
    Rs256,
}

impl KeyAlgorithm {
    /// The JOSE name (`alg`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EdDsa => "EdDSA",
            Self::Es256 => "ES256",
            Self::Rs256 => "RS256",
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyAlgorithm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "EdDSA" => Ok(Self::EdDsa),
            "ES256" => Ok(Self::Es256),
            "RS256" => Ok(Self::Rs256),
            other => Err(format!("unknown signing algorithm {other:?}")),
        }
    }
}

/// Where a key is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyState {
    Next,
    Current,
    Previous,
    Retired,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Next => "next",
            Self::Current => "current",
            Self::Previous => "previous",
            Self::Retired => "retired",
        }
    }

    /// Whether resource servers see the key in the JWKS, and tokens signed by it verify.
    pub fn is_published(self) -> bool {
        self != Self::Retired
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "next" => Ok(Self::Next),
            "current" => Ok(Self::Current),
            "previous" => Ok(Self::Previous),
            "retired" => Ok(Self::Retired),
            other => Err(format!("unknown key state {other:?}")),
        }
    }
}

/// Fresh key material from a [`crate::domain::ports::KeyForge`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedKey {
    pub kid: String,
    /// The public key as a JWK (a JSON object), published as it is.
    pub public_jwk: String,
    /// The private key, sealed by the forge; the core never opens it.
    pub sealed_private: Vec<u8>,
}

/// One stored key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKey {
    pub kid: String,
    pub algorithm: KeyAlgorithm,
    pub state: KeyState,
    pub public_jwk: String,
    pub sealed_private: Vec<u8>,
    pub created_at: DateTime<Utc>,
    /// When it starts (or started) to sign.
    pub activates_at: DateTime<Utc>,
    /// For a `previous` key: when its last token has expired, so it can be retired.
    pub retires_at: Option<DateTime<Utc>>,
    /// For a `retired` key: when it was retired.
    pub retired_at: Option<DateTime<Utc>>,
}

impl SigningKey {
    /// A new key in `state`, signing from `activates_at`.
    pub fn new(
        generated: GeneratedKey,
        algorithm: KeyAlgorithm,
        state: KeyState,
        now: DateTime<Utc>,
        activates_at: DateTime<Utc>,
    ) -> Self {
        Self {
            kid: generated.kid,
            algorithm,
            state,
            public_jwk: generated.public_jwk,
            sealed_private: generated.sealed_private,
            created_at: now,
            activates_at,
            retires_at: None,
            retired_at: None,
        }
    }

    /// Whether the table lets it sign a token issued at `at`: the current key, or the next one
    /// once its time has come (every instance switches then, promoted or not yet).
    pub fn may_sign_at(&self, at: DateTime<Utc>) -> bool {
        match self.state {
            KeyState::Current => true,
            KeyState::Next => self.activates_at <= at,
            KeyState::Previous | KeyState::Retired => false,
        }
    }

    /// Whether it ever signed: it became current at some point before it was retired.
    fn has_signed(&self) -> bool {
        match self.state {
            KeyState::Next => false,
            KeyState::Current | KeyState::Previous => true,
            KeyState::Retired => self
                .retired_at
                .is_none_or(|retired| self.activates_at < retired),
        }
    }
}

/// A conditional change of one key's state: it happens only if the key is still in `from`,
/// so that of several instances making the same move, exactly one does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMove {
    pub kid: String,
    pub from: KeyState,
    pub to: KeyState,
    /// The new `activates_at`, when it changes (a key promoted early).
    pub activates_at: Option<DateTime<Utc>>,
    /// The new `retires_at` (a key becoming `previous`).
    pub retires_at: Option<DateTime<Utc>>,
    /// The new `retired_at` (a key becoming `retired`).
    pub retired_at: Option<DateTime<Utc>>,
}

impl KeyMove {
    fn new(key: &SigningKey, to: KeyState) -> Self {
        Self {
            kid: key.kid.clone(),
            from: key.state,
            to,
            activates_at: None,
            retires_at: None,
            retired_at: None,
        }
    }

    /// `key` becomes current, signing from `at` if that is earlier than planned.
    pub fn promote(key: &SigningKey, at: DateTime<Utc>) -> Self {
        Self {
            activates_at: (at < key.activates_at).then_some(at),
            ..Self::new(key, KeyState::Current)
        }
    }

    /// `key` becomes previous, and is retired once `hold` has passed after `at`.
    pub fn demote(key: &SigningKey, at: DateTime<Utc>, hold: TimeDelta) -> Self {
        Self {
            retires_at: Some(at + hold),
            ..Self::new(key, KeyState::Previous)
        }
    }

    pub fn retire(key: &SigningKey, at: DateTime<Utc>) -> Self {
        Self {
            retired_at: Some(at),
            ..Self::new(key, KeyState::Retired)
        }
    }
}

/// One all-or-nothing change of the key table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyChange {
    /// Applied in order, before the insert.
    pub moves: Vec<KeyMove>,
    pub insert: Option<SigningKey>,
}

/// The durations of the lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPolicy {
    /// How long a key signs before the next one takes over.
    pub rotation_period: TimeDelta,
    /// How long a new key is published before it signs: longer than a resource server may
    /// cache the key set, plus the time every instance needs to load it.
    pub publication_delay: TimeDelta,
    /// How long a key stays published after it stopped signing: until its last token has
    /// expired, clock leeway and the instances' refresh interval included.
    pub verification_hold: TimeDelta,
}

/// Which HS256 tokens (signed with the shared secret, no `kid`) are still accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hs256Acceptance {
    /// HS256 is the configured algorithm.
    Always,
    /// After a switch to an asymmetric algorithm: only tokens issued before `issued_before`
    /// (when the first asymmetric key started signing) that expire by `expiring_by`, so that
    /// the secret can no longer mint an accepted token once those have run out.
    IssuedBefore {
        issued_before: DateTime<Utc>,
        expiring_by: DateTime<Utc>,
    },
}

/// Keys as the instances hold them, with the rules that read them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeySet {
    keys: Vec<SigningKey>,
}

impl KeySet {
    pub fn new(keys: Vec<SigningKey>) -> Self {
        Self { keys }
    }

    pub fn keys(&self) -> &[SigningKey] {
        &self.keys
    }

    pub fn find(&self, kid: &str) -> Option<&SigningKey> {
        self.keys.iter().find(|key| key.kid == kid)
    }

    pub fn current(&self) -> Option<&SigningKey> {
        self.in_state(KeyState::Current)
    }

    pub fn next(&self) -> Option<&SigningKey> {
        self.in_state(KeyState::Next)
    }

    fn in_state(&self, state: KeyState) -> Option<&SigningKey> {
        self.keys.iter().find(|key| key.state == state)
    }

    /// Applies `change` all or nothing, as a store must: `false`, with nothing changed, when a
    /// move finds its key no longer in its `from` state, or the result would hold two `next`
    /// or two `current` keys.
    pub fn apply(&mut self, change: &KeyChange) -> bool {
        let mut draft = self.keys.clone();
        for step in &change.moves {
            let Some(key) = draft
                .iter_mut()
                .find(|key| key.kid == step.kid && key.state == step.from)
            else {
                return false;
            };
            key.state = step.to;
            key.activates_at = step.activates_at.unwrap_or(key.activates_at);
            key.retires_at = step.retires_at.or(key.retires_at);
            key.retired_at = step.retired_at.or(key.retired_at);
        }
        draft.extend(change.insert.clone());
        let twice = |state| draft.iter().filter(|key| key.state == state).count() > 1;
        if twice(KeyState::Next) || twice(KeyState::Current) {
            return false;
        }
        self.keys = draft;
        true
    }

    /// The keys resource servers are shown, and that verify tokens.
    pub fn published(&self) -> impl Iterator<Item = &SigningKey> {
        self.keys.iter().filter(|key| key.state.is_published())
    }

    /// The key that signs a token issued at `at`: the `next` key once its time has come (every
    /// instance switches on time, without waiting to see the promotion), else the current one.
    pub fn signing_at(&self, at: DateTime<Utc>) -> Option<&SigningKey> {
        match self.next() {
            Some(next) if next.activates_at <= at => Some(next),
            _ => self.current(),
        }
    }

    /// When the first asymmetric key started to sign, if one ever did.
    fn first_signed(&self) -> Option<DateTime<Utc>> {
        self.keys
            .iter()
            .filter(|key| key.has_signed())
            .map(|key| key.activates_at)
            .min()
    }

    /// Which HS256 tokens verify, given whether HS256 is the configured algorithm.
    pub fn hs256_acceptance(&self, hs256_signs: bool, token_ttl: TimeDelta) -> Hs256Acceptance {
        match self.first_signed() {
            Some(switch) if !hs256_signs => Hs256Acceptance::IssuedBefore {
                issued_before: switch,
                expiring_by: switch + token_ttl,
            },
            _ => Hs256Acceptance::Always,
        }
    }

    /// The moves due at `now`: a `next` key whose time has come replaces the current one,
    /// and a `previous` key whose tokens have all expired is retired.
    pub fn due_moves(&self, now: DateTime<Utc>, policy: &KeyPolicy) -> Vec<KeyMove> {
        let mut moves = Vec::new();
        for key in &self.keys {
            if key.state == KeyState::Previous && key.retires_at.is_some_and(|at| at <= now) {
                moves.push(KeyMove::retire(key, now));
            }
        }
        if let Some(next) = self.next().filter(|next| next.activates_at <= now) {
            // The current key stopped signing when the next one's time came, not now.
            if let Some(current) = self.current() {
                moves.push(KeyMove::demote(
                    current,
                    next.activates_at,
                    policy.verification_hold,
                ));
            }
            moves.push(KeyMove::promote(next, now));
        }
        moves
    }

    /// When a rotation is due at `now` (no `next` key yet, and the current one's period ends
    /// within the publication delay): the algorithm of the new key and when it will sign.
    pub fn rotation_due(
        &self,
        now: DateTime<Utc>,
        policy: &KeyPolicy,
    ) -> Option<(KeyAlgorithm, DateTime<Utc>)> {
        if self.next().is_some() {
            return None;
        }
        let current = self.current()?;
        let period_ends = current.activates_at + policy.rotation_period;
        (now + policy.publication_delay >= period_ends).then(|| {
            (
                current.algorithm,
                period_ends.max(now + policy.publication_delay),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(minutes: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap() + TimeDelta::minutes(minutes)
    }

    fn key(kid: &str, state: KeyState, activates_at: DateTime<Utc>) -> SigningKey {
        SigningKey {
            kid: kid.to_owned(),
            algorithm: KeyAlgorithm::EdDsa,
            state,
            public_jwk: "{}".to_owned(),
            sealed_private: Vec::new(),
            created_at: activates_at,
            activates_at,
            retires_at: None,
            retired_at: None,
        }
    }

    fn policy() -> KeyPolicy {
        KeyPolicy {
            rotation_period: TimeDelta::days(30),
            publication_delay: TimeDelta::minutes(20),
            verification_hold: TimeDelta::minutes(16),
        }
    }

    #[test]
    fn names_round_trip() {
        for alg in [
            KeyAlgorithm::EdDsa,
            KeyAlgorithm::Es256,
            KeyAlgorithm::Rs256,
        ] {
            assert_eq!(alg.as_str().parse::<KeyAlgorithm>(), Ok(alg));
        }
        for state in [
            KeyState::Next,
            KeyState::Current,
            KeyState::Previous,
            KeyState::Retired,
        ] {
            assert_eq!(state.as_str().parse::<KeyState>(), Ok(state));
        }
        assert!("HS256".parse::<KeyAlgorithm>().is_err());
        assert!("none".parse::<KeyAlgorithm>().is_err());
    }

    #[test]
    fn a_next_key_signs_from_its_time_on_before_anyone_promotes_it() {
        let set = KeySet::new(vec![
            key("a", KeyState::Current, t(0)),
            key("b", KeyState::Next, t(100)),
        ]);
        assert_eq!(set.signing_at(t(99)).unwrap().kid, "a");
        assert_eq!(set.signing_at(t(100)).unwrap().kid, "b");
        assert_eq!(set.published().count(), 2);
    }

    #[test]
    fn a_rotation_starts_one_publication_delay_before_the_period_ends() {
        let set = KeySet::new(vec![key("a", KeyState::Current, t(0))]);
        let period_end = t(0) + policy().rotation_period;
        let early = period_end - policy().publication_delay - TimeDelta::seconds(1);
        assert_eq!(set.rotation_due(early, &policy()), None);
        let start = period_end - policy().publication_delay;
        assert_eq!(
            set.rotation_due(start, &policy()),
            Some((KeyAlgorithm::EdDsa, period_end))
        );
        // Late (every instance was down): still a full publication delay from now.
        let late = period_end + TimeDelta::days(3);
        assert_eq!(
            set.rotation_due(late, &policy()),
            Some((KeyAlgorithm::EdDsa, late + policy().publication_delay))
        );
        let with_next = KeySet::new(vec![
            key("a", KeyState::Current, t(0)),
            key("b", KeyState::Next, period_end),
        ]);
        assert_eq!(with_next.rotation_due(late, &policy()), None);
    }

    #[test]
    fn promotion_demotes_the_current_key_from_the_time_the_next_one_took_over() {
        let set = KeySet::new(vec![
            key("a", KeyState::Current, t(0)),
            key("b", KeyState::Next, t(100)),
        ]);
        assert!(set.due_moves(t(99), &policy()).is_empty());
        let moves = set.due_moves(t(130), &policy());
        assert_eq!(
            moves,
            vec![
                KeyMove {
                    kid: "a".into(),
                    from: KeyState::Current,
                    to: KeyState::Previous,
                    activates_at: None,
                    retires_at: Some(t(116)),
                    retired_at: None,
                },
                KeyMove {
                    kid: "b".into(),
                    from: KeyState::Next,
                    to: KeyState::Current,
                    activates_at: None,
                    retires_at: None,
                    retired_at: None,
                },
            ]
        );
    }

    #[test]
    fn a_previous_key_is_retired_once_its_hold_is_over() {
        let mut previous = key("a", KeyState::Previous, t(0));
        previous.retires_at = Some(t(50));
        let set = KeySet::new(vec![previous, key("b", KeyState::Current, t(34))]);
        assert!(set.due_moves(t(49), &policy()).is_empty());
        let moves = set.due_moves(t(50), &policy());
        assert_eq!(moves.len(), 1);
        assert_eq!(moves[0].to, KeyState::Retired);
        assert_eq!(moves[0].retired_at, Some(t(50)));
    }

    #[test]
    fn hs256_is_accepted_only_for_tokens_from_before_the_first_asymmetric_signature() {
        let ttl = TimeDelta::minutes(15);
        assert_eq!(
            KeySet::default().hs256_acceptance(false, ttl),
            Hs256Acceptance::Always
        );
        let mut never_signed = key("x", KeyState::Retired, t(500));
        never_signed.retired_at = Some(t(400));
        let mut old = key("a", KeyState::Retired, t(10));
        old.retired_at = Some(t(900));
        let set = KeySet::new(vec![
            never_signed,
            old,
            key("b", KeyState::Current, t(300)),
            key("c", KeyState::Next, t(5)),
        ]);
        assert_eq!(
            set.hs256_acceptance(false, ttl),
            Hs256Acceptance::IssuedBefore {
                issued_before: t(10),
                expiring_by: t(25),
            }
        );
        assert_eq!(set.hs256_acceptance(true, ttl), Hs256Acceptance::Always);
    }
}
