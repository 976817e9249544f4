//! [`Mailer`] that writes each whole message, link included, to the log at info level: what
//! `cargo run` uses, so a newcomer sees the links without a mail server. Never the default in
//! production, where the log is not a private channel.

use async_trait::async_trait;

use super::templates::MailTemplates;
use crate::domain::Mail;
use crate::domain::ports::{MailError, Mailer};

/// [`Mailer`] into the log.
pub struct LogMailer {
    templates: MailTemplates,
}

impl LogMailer {
    pub fn new(templates: MailTemplates) -> Self {
        Self { templates }
    }
}

#[async_trait]
impl Mailer for LogMailer {
    async fn send(&self, mail: &Mail) -> Result<String, MailError> {
        let composed = self.templates.compose(mail);
        tracing::info!(
            to = %mail.to,
            subject = %composed.subject,
            body = %composed.text,
            "mail (mail_transport = log)"
        );
        Ok("written to the log".into())
    }
}
