//! [`Mailer`] over SMTP with lettre: `smtp://` (plain, for a local relay, or STARTTLS with
//! `?tls=required`) and `smtps://` (TLS from the start), with an optional user and password in
//! the URL. rustls with ring, like the rest of the service: no OpenSSL.

use std::time::Duration;

use async_trait::async_trait;
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::templates::MailTemplates;
use crate::domain::Mail;
use crate::domain::ports::{MailError, Mailer};

/// How long one delivery may take, connecting included.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// [`Mailer`] to an SMTP server.
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    templates: MailTemplates,
}

impl SmtpMailer {
    /// A mailer for `url`, sending as `from`.
    ///
    /// # Errors
    /// One line when the URL or the sender cannot be used.
    pub fn new(url: &str, from: &str, templates: MailTemplates) -> Result<Self, String> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|err| format!("SMTP_URL cannot be used: {err}"))?
            .timeout(Some(SEND_TIMEOUT))
            .build();
        let from = from
            .parse()
            .map_err(|err| format!("MAIL_FROM is not a mail address: {err}"))?;
        Ok(Self {
            transport,
            from,
            templates,
        })
    }
}

#[async_trait]
impl Mailer for SmtpMailer {
    async fn send(&self, mail: &Mail) -> Result<String, MailError> {
        let to: Mailbox = mail
            .to
            .parse()
            .map_err(|err| MailError::Rejected(format!("cannot address {:?}: {err}", mail.to)))?;
        let composed = self.templates.compose(mail);
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(composed.subject)
            .multipart(MultiPart::alternative_plain_html(
                composed.text,
                composed.html,
            ))
            .map_err(|err| MailError::Rejected(err.to_string()))?;
        match self.transport.send(message).await {
            Ok(response) => Ok(format!(
                "{} {}",
                response.code(),
                response.message().collect::<Vec<_>>().join(" ")
            )),
            Err(err) if err.is_permanent() => Err(MailError::Rejected(err.to_string())),
            Err(err) => Err(MailError::Transient(err.to_string())),
        }
    }
}
