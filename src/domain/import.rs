//! Moving users over from pyauth: which source rows Portcullis can hold, which clash, and what a
//! run writes. The rules are pure; [`import_users`] runs them on the two ports.
//!
//! pyauth compared emails case-sensitively, so its table can hold `Ann@x.io` and `ann@x.io` as
//! two users; here they are one address (the look-alike key). Such groups, and source users
//! whose id or address a user of the target holds who did not come from an import, are
//! conflicts: reported, never silently dropped or overwritten.

use std::collections::HashMap;
use std::fmt;

use chrono::{DateTime, Utc};

use super::secrets::sha256_hex;
use super::{BackendError, Email, FullName, PasswordHash, Role, UserId};

/// Where imported users come from: the value of `users.imported_from`.
pub const PYAUTH: &str = "pyauth";

/// A row of pyauth's `users` table, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceUser {
    pub id: i64,
    pub email: String,
    pub hashed_password: String,
    pub full_name: Option<String>,
    /// The `userrole` label: `USER` or `ADMIN`.
    pub role: String,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
}

/// What the target holds of a user, as far as an import cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetUser {
    pub id: UserId,
    pub email_key: String,
    /// For a user made by an import from pyauth: the [`ImportedUser::digest`] of the source
    /// row as last imported. A login's rehash or a change made here leaves it as it is, so
    /// only a change in pyauth makes a re-run update the user.
    pub imported_digest: Option<String>,
}

/// A source user as Portcullis will hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedUser {
    pub id: UserId,
    pub email: Email,
    pub password_hash: PasswordHash,
    pub full_name: Option<FullName>,
    pub role: Role,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
}

impl ImportedUser {
    /// What a re-run compares to tell whether the source row changed: the hash, role, active
    /// flag and name, as imported.
    pub fn digest(&self) -> String {
        sha256_hex(&format!(
            "{}\n{}\n{}\n{}",
            self.password_hash.as_str(),
            self.role.as_str(),
            self.is_active,
            self.full_name.as_ref().map_or("", |n| n.as_str())
        ))
    }
}

/// What to do with source users that are one address here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnConflict {
    /// Import nothing, and list every conflict.
    Fail,
    /// Keep the one with the smallest id.
    KeepOldest,
    /// Keep the one created last.
    KeepNewest,
}

/// Why a source row is not imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    InvalidEmail,
    EmailTooLong,
    NotBcrypt,
    InvalidName,
    UnknownRole(String),
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidEmail => f.write_str("an email Portcullis refuses"),
            Self::EmailTooLong => f.write_str("an email longer than 254 characters"),
            Self::NotBcrypt => f.write_str("a password hash that is not bcrypt"),
            Self::InvalidName => f.write_str("a full name Portcullis refuses"),
            Self::UnknownRole(role) => write!(f, "an unknown role {role:?}"),
        }
    }
}

/// Why a source user clashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConflictReason {
    /// Another source user has the same address here; `kept` is imported (or, under
    /// [`OnConflict::Fail`], would be the group's first).
    SameAddress { ids: Vec<i64>, kept: Option<i64> },
    /// A user of the target that did not come from an import has this id.
    IdTaken,
    /// A user of the target that did not come from this source row has this address.
    AddressTaken { by: UserId },
}

impl fmt::Display for ConflictReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SameAddress { ids, kept } => {
                let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
                write!(f, "one address here for source ids {}", ids.join(", "))?;
                match kept {
                    Some(kept) => write!(f, "; kept {kept}"),
                    None => Ok(()),
                }
            }
            Self::IdTaken => f.write_str("its id belongs to a user who registered here"),
            Self::AddressTaken { by } => write!(f, "its address belongs to user {by} here"),
        }
    }
}

/// A source row and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Noted<R> {
    pub source_id: i64,
    pub email: String,
    pub reason: R,
}

/// What a run does.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImportPlan {
    pub inserts: Vec<ImportedUser>,
    pub updates: Vec<ImportedUser>,
    pub unchanged: usize,
    pub conflicts: Vec<Noted<ConflictReason>>,
    pub skipped: Vec<Noted<SkipReason>>,
    /// Conflicts under [`OnConflict::Fail`]: the run writes nothing.
    pub refused: bool,
    /// The largest id in the source, imported or not: the target's id sequence moves past it,
    /// so that no user registering here takes an id a later run would bring over.
    pub largest_source_id: i64,
}

impl ImportPlan {
    pub fn writes(&self) -> bool {
        !self.refused && (!self.inserts.is_empty() || !self.updates.is_empty())
    }
}

/// The `$2a$`, `$2b$`, `$2x$` and `$2y$` forms of bcrypt: `$2?$NN$` then 53 characters.
fn is_bcrypt(hash: &str) -> bool {
    let bytes = hash.as_bytes();
    hash.len() == 60
        && matches!(&bytes[..4], b"$2a$" | b"$2b$" | b"$2x$" | b"$2y$")
        && bytes[4..6].iter().all(u8::is_ascii_digit)
        && bytes[6] == b'$'
        && bytes[7..]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'/'))
}

fn convert(row: &SourceUser) -> Result<ImportedUser, SkipReason> {
    if row.email.trim().chars().count() > 254 {
        return Err(SkipReason::EmailTooLong);
    }
    let email = Email::parse(&row.email).map_err(|_| SkipReason::InvalidEmail)?;
    if !is_bcrypt(&row.hashed_password) {
        return Err(SkipReason::NotBcrypt);
    }
    let full_name = row
        .full_name
        .as_deref()
        .map(FullName::parse)
        .transpose()
        .map_err(|_| SkipReason::InvalidName)?;
    let role = match row.role.as_str() {
        "USER" | "user" => Role::User,
        "ADMIN" | "admin" => Role::Admin,
        other => return Err(SkipReason::UnknownRole(other.to_owned())),
    };
    Ok(ImportedUser {
        id: UserId(row.id),
        email,
        password_hash: PasswordHash::new(row.hashed_password.clone()),
        full_name,
        role,
        is_active: row.is_active,
        created_at: row.created_at,
    })
}

fn noted<R>(user: &ImportedUser, reason: R) -> Noted<R> {
    Noted {
        source_id: user.id.0,
        email: user.email.as_str().to_owned(),
        reason,
    }
}

/// Plans importing `source` into a target holding `target`.
pub fn plan(source: &[SourceUser], target: &[TargetUser], on_conflict: OnConflict) -> ImportPlan {
    let mut plan = ImportPlan::default();
    let mut groups: HashMap<String, Vec<ImportedUser>> = HashMap::new();
    let mut order = Vec::new();
    for row in source {
        match convert(row) {
            Ok(user) => {
                let key = user.email.key().to_owned();
                let group = groups.entry(key.clone()).or_default();
                if group.is_empty() {
                    order.push(key);
                }
                group.push(user);
            }
            Err(reason) => plan.skipped.push(Noted {
                source_id: row.id,
                email: row.email.clone(),
                reason,
            }),
        }
    }
    let by_id: HashMap<UserId, &TargetUser> = target.iter().map(|u| (u.id, u)).collect();
    let by_key: HashMap<&str, &TargetUser> =
        target.iter().map(|u| (u.email_key.as_str(), u)).collect();
    for key in order {
        let mut group = groups.remove(&key).unwrap_or_default();
        if group.len() > 1 {
            let ids: Vec<i64> = group.iter().map(|u| u.id.0).collect();
            let keep = match on_conflict {
                OnConflict::Fail => None,
                OnConflict::KeepOldest => group
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, u)| u.id.0)
                    .map(|(i, _)| i),
                OnConflict::KeepNewest => group
                    .iter()
                    .enumerate()
                    .max_by_key(|(_, u)| (u.created_at, u.id.0))
                    .map(|(i, _)| i),
            };
            let kept = keep.map(|i| group[i].id.0);
            for (i, user) in group.iter().enumerate() {
                if Some(i) != keep {
                    let reason = ConflictReason::SameAddress {
                        ids: ids.clone(),
                        kept,
                    };
                    plan.conflicts.push(noted(user, reason));
                }
            }
            let Some(i) = keep else { continue };
            group = vec![group.swap_remove(i)];
        }
        let Some(user) = group.pop() else { continue };
        let holder = by_key.get(key.as_str());
        match by_id.get(&user.id) {
            Some(existing) if existing.imported_digest.is_none() => {
                plan.conflicts.push(noted(&user, ConflictReason::IdTaken));
            }
            Some(existing) if existing.email_key != key => {
                let by = holder.map_or(existing.id, |h| h.id);
                plan.conflicts
                    .push(noted(&user, ConflictReason::AddressTaken { by }));
            }
            Some(existing) => {
                if existing.imported_digest.as_deref() == Some(user.digest().as_str()) {
                    plan.unchanged += 1;
                } else {
                    plan.updates.push(user);
                }
            }
            None => match holder {
                Some(holder) => {
                    let reason = ConflictReason::AddressTaken { by: holder.id };
                    plan.conflicts.push(noted(&user, reason));
                }
                None => plan.inserts.push(user),
            },
        }
    }
    plan.conflicts.sort_by_key(|c| c.source_id);
    plan.largest_source_id = source.iter().map(|row| row.id).max().unwrap_or(0);
    plan.refused = on_conflict == OnConflict::Fail && !plan.conflicts.is_empty();
    plan
}

/// Why an import could not run.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The source cannot be read as pyauth's database; the message says why, in one line.
    #[error("{0}")]
    Source(String),
    /// The target changed between the plan and the write (someone registered meanwhile).
    #[error("the target changed while importing; nothing was written, run the import again")]
    TargetChanged,
    #[error(transparent)]
    Backend(#[from] BackendError),
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone as _;

    use super::*;

    const HASH: &str = "$2b$12$LhayLxezLhK1LhWvKxCyLOj0j1u.Kj0jZ0pEmm134uzrQlFvQJLF6";

    fn row(id: i64, email: &str) -> SourceUser {
        SourceUser {
            id,
            email: email.to_owned(),
            hashed_password: HASH.to_owned(),
            full_name: None,
            role: "USER".to_owned(),
            is_active: true,
            created_at: Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap()
                + chrono::TimeDelta::days(id),
        }
    }

    /// A user of the target; `imported`: by an import of `row(id, email)` as it is.
    fn target(id: i64, email: &str, imported: bool) -> TargetUser {
        let digest = plan(&[row(id, email)], &[], OnConflict::Fail).inserts[0].digest();
        TargetUser {
            id: UserId(id),
            email_key: Email::parse(email).unwrap().key().to_owned(),
            imported_digest: imported.then_some(digest),
        }
    }

    fn ids(users: &[ImportedUser]) -> Vec<i64> {
        users.iter().map(|u| u.id.0).collect()
    }

    #[test]
    fn rows_portcullis_cannot_hold_are_skipped_with_their_reason() {
        let mut argon = row(3, "argon@example.com");
        argon.hashed_password =
            "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub".into();
        let mut admin = row(4, "admin@example.com");
        admin.role = "ADMIN".into();
        let mut odd = row(5, "odd@example.com");
        odd.role = "OWNER".into();
        let long = format!("{}@example.com", "a".repeat(250));
        let mut two_y = row(7, "y@example.com");
        two_y.hashed_password = HASH.replacen("$2b$", "$2y$", 1);
        let source = [
            row(1, "ann@example.com"),
            row(2, "not-an-email"),
            argon,
            admin,
            odd,
            row(6, &long),
            two_y,
        ];
        let plan = plan(&source, &[], OnConflict::Fail);
        assert_eq!(ids(&plan.inserts), [1, 4, 7]);
        assert_eq!(plan.inserts[1].role, Role::Admin);
        let skipped: Vec<(i64, SkipReason)> = plan
            .skipped
            .iter()
            .map(|s| (s.source_id, s.reason.clone()))
            .collect();
        assert_eq!(
            skipped,
            [
                (2, SkipReason::InvalidEmail),
                (3, SkipReason::NotBcrypt),
                (5, SkipReason::UnknownRole("OWNER".into())),
                (6, SkipReason::EmailTooLong),
            ]
        );
        assert!(plan.writes() && !plan.refused);
    }

    #[test]
    fn case_variants_fail_the_run_or_keep_the_oldest_or_the_newest() {
        let source = [
            row(1, "ann@x.io"),
            row(2, "bob@x.io"),
            row(3, "Ann@X.io"),
            row(4, "ＡＮＮ@x.io"),
        ];
        let fail = plan(&source, &[], OnConflict::Fail);
        assert!(fail.refused && !fail.writes());
        assert_eq!(
            fail.conflicts.len(),
            3,
            "every member of the group is listed"
        );
        let oldest = plan(&source, &[], OnConflict::KeepOldest);
        assert_eq!(ids(&oldest.inserts), [1, 2]);
        let reported: Vec<i64> = oldest.conflicts.iter().map(|c| c.source_id).collect();
        assert_eq!(reported, [3, 4]);
        assert_eq!(
            oldest.conflicts[0].reason,
            ConflictReason::SameAddress {
                ids: vec![1, 3, 4],
                kept: Some(1)
            }
        );
        let newest = plan(&source, &[], OnConflict::KeepNewest);
        assert_eq!(ids(&newest.inserts), [4, 2]);
        assert!(!newest.refused);
    }

    #[test]
    fn users_of_the_target_are_never_overwritten_and_imported_ones_are_updated() {
        let mut changed = row(3, "carol@x.io");
        changed.role = "ADMIN".into();
        let source = [
            row(1, "ann@x.io"),
            row(2, "bob@x.io"),
            changed,
            row(4, "dan@x.io"),
            row(5, "eve@x.io"),
        ];
        let existing = [
            target(1, "someone@x.io", false), // id taken by a local user
            target(9, "bob@x.io", false),     // address taken by a local user
            target(3, "carol@x.io", true),    // imported before, role changed since
            target(4, "dan@x.io", true),      // imported before, unchanged
        ];
        let plan = plan(&source, &existing, OnConflict::KeepOldest);
        assert_eq!(ids(&plan.inserts), [5]);
        assert_eq!(ids(&plan.updates), [3]);
        assert_eq!(plan.unchanged, 1);
        let conflicts: Vec<(i64, ConflictReason)> = plan
            .conflicts
            .iter()
            .map(|c| (c.source_id, c.reason.clone()))
            .collect();
        assert_eq!(
            conflicts,
            [
                (1, ConflictReason::IdTaken),
                (2, ConflictReason::AddressTaken { by: UserId(9) }),
            ]
        );
        // A second run over what the first wrote changes nothing.
        let mut after: Vec<TargetUser> = [(4, "dan@x.io"), (5, "eve@x.io")]
            .iter()
            .map(|(id, e)| target(*id, e, true))
            .chain([
                target(1, "someone@x.io", false),
                target(9, "bob@x.io", false),
            ])
            .collect();
        after.push(TargetUser {
            imported_digest: Some(plan.updates[0].digest()),
            ..target(3, "carol@x.io", true)
        });
        let again = super::plan(&source, &after, OnConflict::KeepOldest);
        assert!(!again.writes());
        assert_eq!(again.unchanged, 3);
    }

    #[test]
    fn only_well_formed_bcrypt_hashes_pass() {
        assert!(is_bcrypt(HASH));
        for prefix in ["$2a$", "$2x$", "$2y$"] {
            assert!(is_bcrypt(&HASH.replacen("$2b$", prefix, 1)));
        }
        for bad in [
            "",
            "$2b$12$short",
            &HASH.replacen("$2b$", "$3b$", 1),
            &format!("{HASH}x"),
            &HASH.replacen('L', "'", 1),
        ] {
            assert!(!is_bcrypt(bad), "{bad}");
        }
    }

    mod properties {
        use std::collections::HashSet;

        use proptest::prelude::*;

        use super::*;

        /// Addresses that collide here in several ways (case, a Cyrillic `о`), and some that
        /// Portcullis refuses.
        const EMAILS: [&str; 8] = [
            "ann@example.com",
            "Ann@Example.com",
            "bob@example.com",
            "b\u{43e}b@example.com",
            "eve@example.com",
            "not-an-email",
            " eve@example.com ",
            "x@localhost",
        ];
        const ROLES: [&str; 4] = ["USER", "ADMIN", "admin", "OWNER"];

        fn source() -> impl Strategy<Value = Vec<SourceUser>> {
            let hash = prop_oneof![
                3 => Just(HASH.to_owned()),
                1 => Just(HASH.replacen("$2b$12$", "$2y$10$", 1)),
                1 => "\\PC{0,60}",
                1 => "\\$2[abxyz]\\$[0-9]{2}\\$[./A-Za-z0-9]{50,54}",
            ];
            let row = (
                0..EMAILS.len(),
                hash,
                prop::option::of("\\PC{0,12}"),
                0..ROLES.len(),
                any::<bool>(),
                0i64..5,
            );
            // pyauth's ids are a primary key: unique, in any order.
            (
                prop::collection::hash_set(1i64..40, 0..12),
                prop::collection::vec(row, 12),
            )
                .prop_map(|(ids, rows)| {
                    ids.into_iter()
                        .zip(rows)
                        .map(
                            |(id, (email, hash, name, role, is_active, day))| SourceUser {
                                id,
                                email: EMAILS[email].to_owned(),
                                hashed_password: hash,
                                full_name: name,
                                role: ROLES[role].to_owned(),
                                is_active,
                                created_at: Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap()
                                    + chrono::TimeDelta::days(day),
                            },
                        )
                        .collect()
                })
        }

        /// Users already here: some registered, some imported before (as the row is now, or
        /// as it was), with unique ids and addresses as the target's constraints keep them.
        fn existing() -> impl Strategy<Value = Vec<TargetUser>> {
            let user = (1i64..40, 0..5usize, prop::option::of(any::<bool>()));
            prop::collection::vec(user, 0..6).prop_map(|users| {
                let mut ids = HashSet::new();
                let mut keys = HashSet::new();
                users
                    .into_iter()
                    .filter_map(|(id, email, imported)| {
                        let key = Email::parse(EMAILS[email]).ok()?.key().to_owned();
                        (ids.insert(id) && keys.insert(key.clone())).then(|| TargetUser {
                            id: UserId(id),
                            email_key: key,
                            imported_digest: imported.map(|current| {
                                if current {
                                    target(id, EMAILS[email], true).imported_digest.unwrap()
                                } else {
                                    "an older row".to_owned()
                                }
                            }),
                        })
                    })
                    .collect()
            })
        }

        fn on_conflict() -> impl Strategy<Value = OnConflict> {
            prop_oneof![
                Just(OnConflict::Fail),
                Just(OnConflict::KeepOldest),
                Just(OnConflict::KeepNewest)
            ]
        }

        /// The target after `plan` is written, as the import's transaction leaves it.
        fn applied(mut target: Vec<TargetUser>, plan: &ImportPlan) -> Vec<TargetUser> {
            if !plan.writes() {
                return target;
            }
            for user in &plan.updates {
                let existing = target.iter_mut().find(|t| t.id == user.id).unwrap();
                existing.imported_digest = Some(user.digest());
            }
            target.extend(plan.inserts.iter().map(|user| TargetUser {
                id: user.id,
                email_key: user.email.key().to_owned(),
                imported_digest: Some(user.digest()),
            }));
            target
        }

        proptest! {
            // Each case parses a dozen addresses (NFKC and the confusable skeleton) twice over.
            #![proptest_config(crate::properties::config(128))]

            #[test]
            fn every_row_is_accounted_for_once_and_nothing_is_written_twice(
                source in source(),
                target in existing(),
                on_conflict in on_conflict(),
            ) {
                let plan = plan(&source, &target, on_conflict);
                prop_assert_eq!(
                    plan.inserts.len() + plan.updates.len() + plan.unchanged
                        + plan.conflicts.len() + plan.skipped.len(),
                    source.len()
                );
                prop_assert_eq!(
                    plan.largest_source_id,
                    source.iter().map(|row| row.id).max().unwrap_or(0)
                );
                prop_assert_eq!(
                    plan.refused,
                    on_conflict == OnConflict::Fail && !plan.conflicts.is_empty()
                );
                let written: Vec<&ImportedUser> = plan.inserts.iter().chain(&plan.updates).collect();
                let keys: HashSet<&str> = written.iter().map(|u| u.email.key()).collect();
                let ids: HashSet<UserId> = written.iter().map(|u| u.id).collect();
                prop_assert_eq!(keys.len(), written.len());
                prop_assert_eq!(ids.len(), written.len());
                for user in &plan.inserts {
                    prop_assert!(target.iter().all(|t| t.id != user.id && t.email_key != user.email.key()));
                }
                for user in &plan.updates {
                    let existing = target.iter().find(|t| t.id == user.id).unwrap();
                    prop_assert_eq!(existing.email_key.as_str(), user.email.key());
                    prop_assert!(existing.imported_digest.is_some());
                    prop_assert_ne!(existing.imported_digest.clone(), Some(user.digest()));
                }
                for conflict in &plan.conflicts {
                    let ConflictReason::SameAddress { ids, kept } = &conflict.reason else {
                        continue;
                    };
                    let rows: Vec<&SourceUser> =
                        source.iter().filter(|row| ids.contains(&row.id)).collect();
                    let expected = match on_conflict {
                        OnConflict::Fail => None,
                        OnConflict::KeepOldest => rows.iter().map(|row| row.id).min(),
                        OnConflict::KeepNewest => {
                            rows.iter().max_by_key(|row| (row.created_at, row.id)).map(|row| row.id)
                        }
                    };
                    prop_assert_eq!(*kept, expected);
                }
            }

            #[test]
            fn a_second_run_over_what_the_first_wrote_changes_nothing(
                source in source(),
                target in existing(),
                on_conflict in on_conflict(),
            ) {
                let first = plan(&source, &target, on_conflict);
                let second = plan(&source, &applied(target, &first), on_conflict);
                if first.refused {
                    prop_assert_eq!(second, first);
                } else {
                    prop_assert!(second.inserts.is_empty() && second.updates.is_empty());
                    prop_assert_eq!(
                        second.unchanged,
                        first.inserts.len() + first.updates.len() + first.unchanged
                    );
                    prop_assert_eq!(second.conflicts, first.conflicts);
                    prop_assert_eq!(second.skipped, first.skipped);
                }
            }
        }
    }
}
