//! [`MailOutbox`] and [`LinkTokens`] in the in-memory store.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::store::{MailState, MemoryStore};
use crate::domain::ports::{LinkTokens, MailOutbox};
use crate::domain::{
    BackendError, LinkTokenHash, LinkTokenRecord, MailJob, NewAuditEvent, NewLinkToken,
    OutboxDepth, QueuedMail,
};

#[async_trait]
impl MailOutbox for MemoryStore {
    async fn enqueue_mail(&self, job: MailJob, now: DateTime<Utc>) -> Result<(), BackendError> {
        self.state()?.enqueue(job, now);
        Ok(())
    }

    async fn claim_mail(
        &self,
        now: DateTime<Utc>,
        lease: chrono::TimeDelta,
        limit: u32,
    ) -> Result<Vec<QueuedMail>, BackendError> {
        let mut state = self.state()?;
        Ok(state
            .outbox
            .iter_mut()
            .filter(|(_, mail)| {
                mail.state == MailState::Pending
                    && mail.due_at <= now
                    && mail.claimed_until.is_none_or(|until| until <= now)
            })
            .take(limit as usize)
            .map(|(id, mail)| {
                mail.claimed_until = Some(now + lease);
                QueuedMail {
                    id: *id,
                    job: mail.job.clone(),
                    attempts: mail.attempts,
                    queued_at: mail.queued_at,
                }
            })
            .collect())
    }

    async fn finish_mail(&self, id: i64, _now: DateTime<Utc>) -> Result<(), BackendError> {
        if let Some(mail) = self.state()?.outbox.get_mut(&id) {
            mail.state = MailState::Sent;
            mail.claimed_until = None;
        }
        Ok(())
    }

    async fn retry_mail(
        &self,
        id: i64,
        attempts: u32,
        retry_at: DateTime<Utc>,
        _error: &str,
    ) -> Result<(), BackendError> {
        if let Some(mail) = self.state()?.outbox.get_mut(&id) {
            mail.attempts = attempts;
            mail.due_at = retry_at;
            mail.claimed_until = None;
        }
        Ok(())
    }

    async fn fail_mail(&self, id: i64, attempts: u32, _error: &str) -> Result<(), BackendError> {
        if let Some(mail) = self.state()?.outbox.get_mut(&id) {
            mail.attempts = attempts;
            mail.state = MailState::Failed;
            mail.claimed_until = None;
        }
        Ok(())
    }

    async fn mail_depth(&self) -> Result<OutboxDepth, BackendError> {
        let state = self.state()?;
        let count = |wanted: MailState| {
            state
                .outbox
                .values()
                .filter(|mail| mail.state == wanted)
                .count() as u64
        };
        Ok(OutboxDepth {
            pending: count(MailState::Pending),
            failed: count(MailState::Failed),
        })
    }
}

#[async_trait]
impl LinkTokens for MemoryStore {
    async fn store_email_token(
        &self,
        token: NewLinkToken,
        audit: Option<NewAuditEvent>,
    ) -> Result<(), BackendError> {
        let mut state = self.state()?;
        state.email_tokens.insert(token.hash.clone(), token);
        if let Some(audit) = audit {
            state.record(audit);
        }
        Ok(())
    }

    async fn find_email_token(
        &self,
        hash: &LinkTokenHash,
    ) -> Result<Option<LinkTokenRecord>, BackendError> {
        let state = self.state()?;
        Ok(state.email_tokens.get(hash).and_then(|token| {
            Some(LinkTokenRecord {
                kind: token.kind,
                user: state.users.get(&token.user_id)?.clone(),
                email: token.email.clone(),
                new_email: token.new_email.clone(),
                keep_session: token.keep_session,
                expires_at: token.expires_at,
                spent_at: state.spent_email_tokens.get(hash).copied(),
            })
        }))
    }
}
