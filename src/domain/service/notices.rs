//! Mail the use cases may send beside their purpose: whether a transport is configured, and the
//! notices of second factors added or removed, within the mail budgets.

use std::sync::Arc;

use super::limits::Guard;
use crate::domain::ports::Mailer;
use crate::domain::{BackendError, FactorChange, MailJob, User};

/// What mail may go beside a use case's purpose.
pub struct Mailing {
    pub(super) mailer: Option<Arc<dyn Mailer>>,
    pub(super) guard: Arc<Guard>,
}

impl Mailing {
    /// Whether mail can be sent at all.
    pub fn mail_configured(&self) -> bool {
        self.mailer.is_some()
    }

    /// The mail that tells `user`'s address of a change of their second factors (`factors`,
    /// named), caused by a request from the client address `ip` (`None`: by an admin, whose
    /// mail counts in the recipient's budget alone): `None` without a mail transport, or when
    /// a budget is spent (the change happens anyway).
    pub(super) async fn factor_notice(
        &self,
        user: &User,
        change: FactorChange,
        factors: Vec<String>,
        ip: Option<&str>,
    ) -> Result<Option<MailJob>, BackendError> {
        if !self.mail_configured() || factors.is_empty() {
            return Ok(None);
        }
        if !self.guard.within_mail_budget(&[&user.email], ip).await? {
            return Ok(None);
        }
        Ok(Some(MailJob::FactorNotice {
            user_id: user.id,
            change,
            factors,
        }))
    }
}
