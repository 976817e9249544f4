//! [`AccountChange`]s applied to the in-memory state, under its one lock: every condition is
//! checked (those an edit could break too) before anything is written, so a refused change
//! leaves nothing behind, as a rolled-back transaction does.

use super::store::State;
use crate::domain::mfa::FactorRemoval;
use crate::domain::{AccountChange, Applied, Condition, Edit, Refusal, Role, User, UserId};

impl State {
    /// Applies `change` all or nothing.
    pub(super) fn apply(&mut self, change: AccountChange) -> Applied {
        let Some(before) = self.users.get(&change.user).cloned() else {
            return Applied::Refused(Refusal::UnknownUser);
        };
        if let Err(refusal) = self.admissible(&before, &change) {
            return Applied::Refused(refusal);
        }
        let (id, at) = (change.user, change.at);
        for condition in &change.conditions {
            if let Condition::SpendsToken(token) = condition {
                self.spend(token, id, at);
            }
        }
        for edit in change.edits {
            self.edit(id, edit, at);
        }
        for event in change.audit {
            self.record(event);
        }
        for job in change.mail {
            self.enqueue(job, at);
        }
        match self.users.get(&id) {
            Some(user) => Applied::Done(user.clone()),
            None => Applied::Deleted,
        }
    }

    /// Whether every condition of `change` holds for `before`, and its edits can all be made.
    fn admissible(&self, before: &User, change: &AccountChange) -> Result<(), Refusal> {
        for condition in &change.conditions {
            self.holds(before, condition)?;
        }
        for edit in &change.edits {
            match edit {
                Edit::SetEmail(email)
                    if self
                        .owner_of(email.key())
                        .is_some_and(|owner| owner != before.id) =>
                {
                    return Err(Refusal::AddressTaken);
                }
                Edit::AddPasskey(passkey)
                    if self.factors.credential_taken(&passkey.credential_id) =>
                {
                    return Err(Refusal::CredentialTaken);
                }
                _ => {}
            }
        }
        let guarded = change.conditions.contains(&Condition::LeavesAnActiveAdmin);
        if guarded
            && is_active_admin(before)
            && !self.still_active_admin(before, &change.edits)
            && self.other_admins(before.id) == 0
        {
            return Err(Refusal::LastAdmin);
        }
        Ok(())
    }

    fn holds(&self, before: &User, condition: &Condition) -> Result<(), Refusal> {
        let id = before.id;
        let (holds, refusal) = match condition {
            Condition::Current { credential_version } => (
                before.is_active && before.credential_version == *credential_version,
                Refusal::NotCurrent,
            ),
            Condition::SpendsToken(token) => (self.unspent(token, id), Refusal::TokenSpent),
            Condition::AddressIs(address) => {
                (before.email.as_str() == address, Refusal::AddressChanged)
            }
            Condition::UnverifiedFactorsAre(removal) => (
                self.factors.added_unverified(id).same_as(removal),
                Refusal::FactorsChanged,
            ),
            Condition::PasswordHashIs(hash) => {
                (before.password_hash == *hash, Refusal::PasswordChanged)
            }
            Condition::PendingTotpIs(sealed) => (
                self.factors.pending_totp_is(id, sealed),
                Refusal::TotpChanged,
            ),
            Condition::HoldsPasskey(passkey) => {
                (self.factors.holds(id, *passkey), Refusal::NoSuchPasskey)
            }
            Condition::HasFactors { passkeys } => (
                self.factors.has_any(id, *passkeys),
                Refusal::NothingToRemove,
            ),
            Condition::LeavesAnActiveAdmin => (true, Refusal::LastAdmin),
        };
        if holds { Ok(()) } else { Err(refusal) }
    }

    /// Whether `before` is still an active admin after `edits`.
    fn still_active_admin(&self, before: &User, edits: &[Edit]) -> bool {
        let (mut role, mut active) = (before.role, before.is_active);
        for edit in edits {
            match edit {
                Edit::SetRole(to) => role = *to,
                Edit::SetActive(to) => active = *to,
                Edit::Delete => return false,
                _ => {}
            }
        }
        role == Role::Admin && active
    }

    fn edit(&mut self, id: UserId, edit: Edit, at: chrono::DateTime<chrono::Utc>) {
        match edit {
            Edit::EndSessions { keep } => self.end_sessions(id, keep, at),
            Edit::SpendTokens(kinds) => self.spend_tokens(id, &kinds, at),
            Edit::RemoveFactors(removal) => self.factors.remove(id, &removal),
            Edit::RemoveAllPasskeys => {
                let all = self.factors.passkeys_of(id);
                self.factors.remove(
                    id,
                    &FactorRemoval {
                        totp: false,
                        passkeys: all,
                    },
                );
            }
            Edit::ConfirmTotp {
                step,
                recovery,
                added_unverified,
            } => self
                .factors
                .confirm_totp(id, step, recovery, added_unverified, at),
            Edit::AddPasskey(passkey) => self.factors.add_passkey(passkey),
            Edit::Delete => self.delete(id),
            Edit::SetEmail(email) => {
                let Some(user) = self.users.get_mut(&id) else {
                    return;
                };
                let old = user.email.key().to_owned();
                user.email = email;
                let new = user.email.key().to_owned();
                self.rekey(&old, new, id);
            }
            field => {
                if let Some(user) = self.users.get_mut(&id) {
                    set_field(user, field, at);
                }
            }
        }
    }
}

fn is_active_admin(user: &User) -> bool {
    user.role == Role::Admin && user.is_active
}

/// An edit of the user's own fields.
fn set_field(user: &mut User, edit: Edit, at: chrono::DateTime<chrono::Utc>) {
    match edit {
        Edit::SetPasswordHash(hash) => user.password_hash = hash,
        Edit::BumpCredentialVersion => user.credential_version += 1,
        Edit::SetEmailVerified(verified) => user.email_verified = verified,
        Edit::SetRole(role) => user.role = role,
        Edit::SetActive(active) => user.is_active = active,
        Edit::SetFullName(name) => user.full_name = name,
        Edit::Touch => user.updated_at = at,
        _ => {}
    }
}
