//! Mail templates: a plain-text and an HTML part per kind, compiled into the binary and
//! overridable, file by file, from a folder.
//!
//! A text template starts with a `Subject: ...` line and a blank line. Both parts may use
//! `{link}`, `{new_email}`, `{valid_for}` and `{factors}`; in the HTML part the values are
//! escaped.

use std::collections::HashMap;
use std::path::Path;

use chrono::TimeDelta;

use crate::domain::{Mail, MailKind};

const KINDS: [MailKind; 10] = [
    MailKind::PasswordReset,
    MailKind::Invitation,
    MailKind::Verification,
    MailKind::EmailChange,
    MailKind::EmailChangeNotice,
    MailKind::EmailInUse,
    MailKind::FactorAdded,
    MailKind::FactorRemoved,
    MailKind::FactorsRemovedByReset,
    MailKind::Test,
];

fn builtin(kind: MailKind) -> (&'static str, &'static str) {
    match kind {
        MailKind::PasswordReset => (
            include_str!("templates/reset.txt"),
            include_str!("templates/reset.html"),
        ),
        MailKind::Invitation => (
            include_str!("templates/invitation.txt"),
            include_str!("templates/invitation.html"),
        ),
        MailKind::Verification => (
            include_str!("templates/verify.txt"),
            include_str!("templates/verify.html"),
        ),
        MailKind::EmailChange => (
            include_str!("templates/email_change.txt"),
            include_str!("templates/email_change.html"),
        ),
        MailKind::EmailChangeNotice => (
            include_str!("templates/email_change_notice.txt"),
            include_str!("templates/email_change_notice.html"),
        ),
        MailKind::EmailInUse => (
            include_str!("templates/email_in_use.txt"),
            include_str!("templates/email_in_use.html"),
        ),
        MailKind::FactorAdded => (
            include_str!("templates/factor_added.txt"),
            include_str!("templates/factor_added.html"),
        ),
        MailKind::FactorRemoved => (
            include_str!("templates/factor_removed.txt"),
            include_str!("templates/factor_removed.html"),
        ),
        MailKind::FactorsRemovedByReset => (
            include_str!("templates/factors_removed_by_reset.txt"),
            include_str!("templates/factors_removed_by_reset.html"),
        ),
        MailKind::Test => (
            include_str!("templates/test.txt"),
            include_str!("templates/test.html"),
        ),
    }
}

/// One kind's parts.
#[derive(Debug, Clone)]
struct Template {
    subject: String,
    text: String,
    html: String,
}

impl Template {
    fn parse(name: &str, text: &str, html: &str) -> Result<Self, String> {
        let (first, body) = text.split_once('\n').unwrap_or((text, ""));
        let subject = first
            .strip_prefix("Subject:")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("{name}.txt must start with a \"Subject: ...\" line"))?;
        Ok(Self {
            subject: subject.to_owned(),
            text: body.trim_start_matches(['\r', '\n']).to_owned(),
            html: html.to_owned(),
        })
    }
}

/// A message ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Composed {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Every kind's template.
#[derive(Debug, Clone)]
pub struct MailTemplates {
    templates: HashMap<MailKind, Template>,
}

impl MailTemplates {
    /// The built-in templates, with the files of `dir` (`reset.txt`, `reset.html`, ...) in
    /// their place where they exist.
    ///
    /// # Errors
    /// One line naming a file that cannot be read or has no subject line.
    pub fn load(dir: Option<&Path>) -> Result<Self, String> {
        let mut templates = HashMap::new();
        for kind in KINDS {
            let (text, html) = builtin(kind);
            let read = |ext: &str, fallback: &str| -> Result<String, String> {
                let Some(path) = dir.map(|d| d.join(format!("{}.{ext}", kind.as_str()))) else {
                    return Ok(fallback.to_owned());
                };
                match std::fs::read_to_string(&path) {
                    Ok(custom) => Ok(custom),
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                        Ok(fallback.to_owned())
                    }
                    Err(err) => Err(format!("cannot read {}: {err}", path.display())),
                }
            };
            let template =
                Template::parse(kind.as_str(), &read("txt", text)?, &read("html", html)?)?;
            templates.insert(kind, template);
        }
        Ok(Self { templates })
    }

    /// `mail` in words.
    pub fn compose(&self, mail: &Mail) -> Composed {
        let template = &self.templates[&mail.kind];
        let values = [
            ("{link}", mail.link.clone().unwrap_or_default()),
            ("{new_email}", mail.new_email.clone().unwrap_or_default()),
            (
                "{valid_for}",
                mail.valid_for.map(duration).unwrap_or_default(),
            ),
            ("{factors}", mail.factors.clone().unwrap_or_default()),
        ];
        let fill = |template: &str, escape: bool| {
            values
                .iter()
                .fold(template.to_owned(), |text, (name, value)| {
                    let value = if escape {
                        html_escape(value)
                    } else {
                        value.clone()
                    };
                    text.replace(name, &value)
                })
        };
        Composed {
            subject: fill(&template.subject, false),
            text: fill(&template.text, false),
            html: fill(&template.html, true),
        }
    }
}

/// `30 minutes`, `24 hours`, `3 days`.
fn duration(ttl: TimeDelta) -> String {
    let plural = |n: i64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    if ttl.num_days() >= 2 && ttl.num_hours() % 24 == 0 {
        plural(ttl.num_days(), "day")
    } else if ttl.num_hours() >= 2 && ttl.num_minutes() % 60 == 0 {
        plural(ttl.num_hours(), "hour")
    } else {
        plural(ttl.num_minutes(), "minute")
    }
}

fn html_escape(value: &str) -> String {
    value
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reset() -> Mail {
        Mail {
            kind: MailKind::PasswordReset,
            to: "ann@example.com".into(),
            link: Some("https://auth.example/console/reset?token=abc&x=1".into()),
            new_email: None,
            valid_for: Some(TimeDelta::minutes(30)),
            factors: None,
        }
    }

    #[test]
    fn a_factor_notice_names_the_factors_escaped_in_html() {
        let composed = MailTemplates::load(None).unwrap().compose(&Mail {
            kind: MailKind::FactorAdded,
            factors: Some("passkey \"<Work>\"".into()),
            ..reset()
        });
        assert!(
            composed.text.contains("passkey \"<Work>\""),
            "{}",
            composed.text
        );
        assert!(composed.html.contains("passkey &quot;&lt;Work&gt;&quot;"));
    }

    #[test]
    fn every_builtin_template_has_a_subject_and_both_parts() {
        let templates = MailTemplates::load(None).unwrap();
        for kind in KINDS {
            let composed = templates.compose(&Mail { kind, ..reset() });
            assert!(!composed.subject.is_empty(), "{kind:?}");
            assert!(
                !composed.text.is_empty() && !composed.html.is_empty(),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn values_fill_both_parts_and_are_escaped_in_html() {
        let composed = MailTemplates::load(None).unwrap().compose(&reset());
        assert!(
            composed
                .text
                .contains("https://auth.example/console/reset?token=abc&x=1")
        );
        assert!(composed.text.contains("30 minutes"));
        assert!(composed.html.contains("token=abc&amp;x=1"));
        assert!(!composed.text.contains("{link}"));
    }

    #[test]
    fn a_folder_overrides_the_templates_it_has() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("reset.txt"),
            "Subject: Ours\n\nGo to {link}",
        )
        .unwrap();
        let templates = MailTemplates::load(Some(dir.path())).unwrap();
        let composed = templates.compose(&reset());
        assert_eq!(composed.subject, "Ours");
        assert_eq!(
            composed.text,
            "Go to https://auth.example/console/reset?token=abc&x=1"
        );
        // The HTML part it lacks stays built in.
        assert!(composed.html.contains("Reset your password"));
        std::fs::write(dir.path().join("verify.txt"), "no subject").unwrap();
        let err = MailTemplates::load(Some(dir.path())).unwrap_err();
        assert!(err.contains("verify.txt"), "{err}");
    }

    #[test]
    fn lifetimes_read_naturally() {
        assert_eq!(duration(TimeDelta::minutes(30)), "30 minutes");
        assert_eq!(duration(TimeDelta::hours(24)), "24 hours");
        assert_eq!(duration(TimeDelta::hours(72)), "3 days");
        assert_eq!(duration(TimeDelta::minutes(1)), "1 minute");
    }
}
