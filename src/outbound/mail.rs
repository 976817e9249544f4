//! The [`Mailer`](crate::domain::ports::Mailer) adapters: messages composed from templates
//! ([`templates`]), delivered over SMTP ([`SmtpMailer`]) or written to the log ([`LogMailer`]).

mod log;
mod smtp;
pub mod templates;

pub use self::log::LogMailer;
pub use self::smtp::SmtpMailer;
pub use self::templates::{Composed, MailTemplates};
