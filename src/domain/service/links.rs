//! The one-time links that mail carries: their tokens, drawn when the mail is composed.

use std::sync::Arc;

use chrono::TimeDelta;

use crate::domain::ports::{Clock, LinkTokens};
use crate::domain::{
    AuditKind, AuthPolicy, BackendError, ClientInfo, LinkTokenHash, LinkTokenKind, NewAuditEvent,
    NewLinkToken, PasswordError, User,
};

/// The one-time link tokens: drawn for a mail, checked when redeemed.
pub struct Links {
    pub(super) link_tokens: Arc<dyn LinkTokens>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) policy: Arc<AuthPolicy>,
}

impl Links {
    /// Stores a fresh token of `kind` for `user`, recording `audit` with it when given, and
    /// returns its link and lifetime.
    pub(super) async fn issue_link(
        &self,
        kind: LinkTokenKind,
        user: &User,
        audit: Option<NewAuditEvent>,
    ) -> Result<(String, TimeDelta), BackendError> {
        let token = NewLinkToken::generate(kind, user, self.clock.now(), self.ttl_of(kind));
        self.issue_token(token, audit).await
    }

    pub(super) async fn issue_token(
        &self,
        token: NewLinkToken,
        audit: Option<NewAuditEvent>,
    ) -> Result<(String, TimeDelta), BackendError> {
        let policy = &self.policy.mail;
        let template = match token.kind {
            LinkTokenKind::PasswordReset => &policy.reset_link,
            LinkTokenKind::Verification => &policy.verify_link,
            LinkTokenKind::EmailChange => &policy.email_change_link,
        };
        let link = crate::domain::link_token::link(template, &policy.public_url, &token.secret);
        let ttl = token.expires_at - token.created_at;
        self.link_tokens.store_email_token(token, audit).await?;
        Ok((link, ttl))
    }

    fn ttl_of(&self, kind: LinkTokenKind) -> TimeDelta {
        match kind {
            LinkTokenKind::PasswordReset => self.policy.mail.reset_ttl,
            LinkTokenKind::Verification | LinkTokenKind::EmailChange => {
                self.policy.mail.verification_ttl
            }
        }
    }

    /// `password.reset_requested` for `user`, now, by nobody named yet.
    pub(super) fn reset_requested(&self, user: &User) -> NewAuditEvent {
        self.event(AuditKind::PasswordResetRequested, user, self.clock.now())
    }

    /// `kind` of `user` at `now`, by a link (no client of a request to name).
    pub(super) fn event(
        &self,
        kind: AuditKind,
        user: &User,
        now: chrono::DateTime<chrono::Utc>,
    ) -> NewAuditEvent {
        NewAuditEvent::new(kind, Some(user.id), &ClientInfo::default(), now)
    }

    pub(super) async fn usable_token(
        &self,
        token: &str,
        kind: LinkTokenKind,
    ) -> Result<crate::domain::LinkTokenRecord, RedeemError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(RedeemError::InvalidToken);
        }
        self.link_tokens
            .find_email_token(&LinkTokenHash::of(token))
            .await?
            .filter(|record| record.usable_for(kind, self.clock.now()))
            .ok_or(RedeemError::InvalidToken)
    }
}

/// The longest token worth looking up: ours are 43 characters.
const MAX_TOKEN_LEN: usize = 128;

/// Why a link's token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum RedeemError {
    /// Unknown, spent, expired, of another kind, or its user changed: one answer for all.
    #[error("invalid or expired token")]
    InvalidToken,
    /// The new address of an email change was taken meanwhile.
    #[error("email already registered")]
    EmailTaken,
    /// The new password of a reset breaks the rules (nothing is spent then).
    #[error("password {0}")]
    WeakPassword(#[from] PasswordError),
    #[error(transparent)]
    Backend(#[from] BackendError),
}
