//! The pages: askama templates (checked and compiled into the binary) and the views they
//! show, already formatted, so templates hold no logic beyond `if` and `for`.

use askama::Template;
use chrono::{DateTime, Utc};
use poem::http::{StatusCode, header};
use poem::{IntoResponse, Response};

use super::form_state::FormState;
use super::guard::Visitor;
use crate::domain::mfa::{Factors, Passkey};
use crate::domain::{AuditEvent, Role, Session, SessionId, User};

/// The frame of every page: its title, the navigation of a signed-in user, a notice.
pub(crate) struct Chrome {
    pub title: String,
    pub nav: Option<Nav>,
    pub notice: Option<&'static str>,
}

/// The navigation of a signed-in user, with the sign-out form's token.
pub(crate) struct Nav {
    pub email: String,
    pub is_admin: bool,
    pub csrf: String,
}

impl Chrome {
    pub(super) fn new(title: &str, visitor: &Visitor) -> Self {
        let nav = visitor.principal().map(|principal| Nav {
            email: principal.user.email.as_str().to_owned(),
            is_admin: principal.user.role == Role::Admin,
            csrf: visitor.session_csrf().unwrap_or_default(),
        });
        Self {
            title: title.to_owned(),
            nav,
            notice: None,
        }
    }

    /// A page for nobody in particular (no navigation).
    pub(super) fn anonymous(title: &str) -> Self {
        Self {
            title: title.to_owned(),
            nav: None,
            notice: None,
        }
    }

    /// With the notice a redirect asked for (`?done=...`); unknown names show nothing, so a
    /// link cannot put words of its own on a page.
    pub(super) fn noting(mut self, done: Option<&str>) -> Self {
        self.notice = done.and_then(notice);
        self
    }
}

fn notice(done: &str) -> Option<&'static str> {
    Some(match done {
        "signed-out" => "You are signed out.",
        "registered" => "Your account is ready. Sign in with your email and password.",
        "reset" => "Your new password is set. Sign in with it.",
        "mail-sent" => {
            "If an account uses that address, a link to choose a new password is on its way. \
             It works once, and not for long."
        }
        "password" => "Your password is changed. Your other sessions were ended.",
        "verification-sent" => "A verification link is on its way to your address.",
        "email-change-sent" => {
            "A confirmation link is on its way to the new address. Your address changes when \
             you follow it."
        }
        "session-ended" => "That session is ended.",
        "app-revoked" => "The application's access is revoked: its tokens no longer work.",
        "verified" => "Your email address is verified.",
        "email-changed" => "Your email address is changed. Sign in with the new one.",
        "user-updated" => "The user is updated.",
        "sessions-ended" => "Every session of the user is ended.",
        "reset-link-sent" => "A reset link is on its way to the user.",
        "user-deleted" => "The user is deleted.",
        "client-deleted" => "The application is deleted: every grant and token issued to it ended.",
        "two-step-reset" => {
            "The user's two-step verification is reset: they sign in with their password alone \
             until they set it up again."
        }
        "two-step-on" => "Two-step verification is on.",
        "two-step-off" => "Two-step verification is off: you sign in with your password alone.",
        "passkey-added" => "Your passkey is added: sign in with it next time.",
        "passkey-renamed" => "The passkey is renamed.",
        "passkey-removed" => "The passkey is removed: it no longer signs you in.",
        _ => return None,
    })
}

/// A template as an HTML answer with `status`.
pub(super) fn render(page: &impl Template, status: StatusCode) -> Response {
    match page.render() {
        Ok(html) => Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
            .body(html),
        Err(err) => {
            tracing::error!(error = %err, "a console page failed to render");
            (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error").into_response()
        }
    }
}

/// A page that only says something (a refusal, a missing page, an outage).
pub(super) fn message(status: StatusCode, chrome: Chrome, text: &str) -> Response {
    render(
        &Message {
            chrome,
            text: text.to_owned(),
        },
        status,
    )
}

/// `text` percent-encoded for a query string: everything but RFC 3986's unreserved
/// characters.
pub(super) fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A query string of `pairs`, leaving out the empty ones.
pub(super) fn query_string(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(name, value)| format!("{name}={}", encode(value)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Dates as people read them, in UTC (the console does not know the reader's zone).
pub(crate) fn when(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// A user as the pages show one.
pub(crate) struct UserView {
    pub id: i64,
    pub email: String,
    pub name: String,
    pub role: &'static str,
    pub active: bool,
    pub verified: bool,
    pub created: String,
    pub last_login: String,
}

impl From<&User> for UserView {
    fn from(user: &User) -> Self {
        Self {
            id: user.id.0,
            email: user.email.as_str().to_owned(),
            name: user
                .full_name
                .as_ref()
                .map(|n| n.as_str().to_owned())
                .unwrap_or_default(),
            role: user.role.as_str(),
            active: user.is_active,
            verified: user.email_verified,
            created: when(user.created_at),
            last_login: user.last_login_at.map_or_else(|| "never".into(), when),
        }
    }
}

/// A session as the pages show one.
pub(crate) struct SessionView {
    pub id: String,
    pub current: bool,
    /// The browser and system, as people say them ("Chrome on Linux").
    pub client: String,
    /// The user agent as sent, for whoever wants the details.
    pub raw_client: String,
    pub ip: String,
    pub created: String,
    pub last_used: String,
}

impl SessionView {
    pub(super) fn new(session: &Session, current: Option<SessionId>) -> Self {
        Self {
            id: session.id.to_string(),
            current: current == Some(session.id),
            client: session
                .client
                .user_agent
                .as_deref()
                .map_or_else(|| "Unknown client".into(), describe_client),
            raw_client: session.client.user_agent.clone().unwrap_or_default(),
            ip: session.client.ip.clone().unwrap_or_default(),
            created: when(session.created_at),
            last_used: when(session.last_used_at),
        }
    }
}

/// "Firefox on Windows 10" for a browser's user agent; the string itself when the parser does
/// not know it (a script, a client library).
fn describe_client(user_agent: &str) -> String {
    const UNKNOWN: &str = "UNKNOWN";
    match woothee::parser::Parser::new().parse(user_agent) {
        Some(found) if found.name != UNKNOWN && found.os != UNKNOWN => {
            format!("{} on {}", found.name, found.os)
        }
        Some(found) if found.name != UNKNOWN => found.name.to_owned(),
        _ => user_agent.to_owned(),
    }
}

/// A passkey as the pages show one.
pub(crate) struct PasskeyView {
    pub id: String,
    pub name: String,
    pub created: String,
    pub last_used: String,
}

impl From<&Passkey> for PasskeyView {
    fn from(passkey: &Passkey) -> Self {
        Self {
            id: passkey.id.to_string(),
            name: passkey.name.clone(),
            created: when(passkey.created_at),
            last_used: passkey.last_used_at.map_or_else(|| "never".into(), when),
        }
    }
}

/// A user's second factors as the admin's page names them; `None` when there is none.
pub(crate) fn factors_text(factors: Factors) -> Option<String> {
    let mut names = Vec::new();
    if factors.totp {
        names.push("authenticator app".to_owned());
    }
    if factors.passkeys > 0 {
        names.push(format!("passkeys ({})", factors.passkeys));
    }
    (!names.is_empty()).then(|| names.join(", "))
}

/// An audit event as the log page shows one.
pub(crate) struct EventView {
    pub at: String,
    pub kind: &'static str,
    pub success: bool,
    pub user: String,
    pub actor: String,
    pub ip: String,
    pub detail: String,
}

impl From<&AuditEvent> for EventView {
    fn from(event: &AuditEvent) -> Self {
        let e = &event.event;
        Self {
            at: when(e.at),
            kind: e.kind.as_str(),
            success: e.success,
            user: e.user_id.map(|id| id.0.to_string()).unwrap_or_default(),
            actor: e.actor_id.map(|id| id.0.to_string()).unwrap_or_default(),
            ip: e.client.ip.clone().unwrap_or_default(),
            detail: e
                .detail
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

#[derive(Template)]
#[template(path = "message.html", config = "src/inbound/console/askama.toml")]
pub(crate) struct Message {
    pub chrome: Chrome,
    pub text: String,
}

#[derive(Template)]
#[template(path = "sign_in.html", config = "src/inbound/console/askama.toml")]
pub(crate) struct SignIn {
    pub chrome: Chrome,
    pub form: FormState,
    pub csrf: String,
    pub next: String,
}

#[derive(Template)]
#[template(path = "register.html", config = "src/inbound/console/askama.toml")]
pub(crate) struct Register {
    pub chrome: Chrome,
    pub form: FormState,
    pub csrf: String,
}

#[derive(Template)]
#[template(path = "forgot.html", config = "src/inbound/console/askama.toml")]
pub(crate) struct Forgot {
    pub chrome: Chrome,
    pub form: FormState,
    pub csrf: String,
}

#[derive(Template)]
#[template(path = "reset.html", config = "src/inbound/console/askama.toml")]
pub(crate) struct Reset {
    pub chrome: Chrome,
    pub form: FormState,
    pub csrf: String,
    pub token: String,
}

/// The page a mailed link opens (verify an address, confirm a new one): a button that sends
/// the token, since mail scanners open links, and opening one must not change anything.
#[derive(Template)]
#[template(path = "confirm_link.html", config = "src/inbound/console/askama.toml")]
pub(crate) struct ConfirmLink {
    pub chrome: Chrome,
    pub form: FormState,
    pub csrf: String,
    pub token: String,
    pub action: &'static str,
    pub lead: &'static str,
    pub button: &'static str,
}

/// The second step of a sign-in: a code for the pending login that `mfa_token` names.
#[derive(Template)]
#[template(path = "sign_in_code.html", config = "src/inbound/console/askama.toml")]
pub(crate) struct SignInCode {
    pub chrome: Chrome,
    pub form: FormState,
    pub csrf: String,
    pub mfa_token: String,
    pub next: String,
}

#[derive(Template)]
#[template(path = "account.html", config = "src/inbound/console/askama.toml")]
pub(crate) struct Account {
    pub chrome: Chrome,
    pub form: FormState,
    pub user: UserView,
    pub sessions: Vec<SessionView>,
    pub csrf: String,
    /// Mail is configured: "send again" can work.
    pub mail: bool,
    /// An authenticator app is set up.
    pub two_step: bool,
    /// How many passkeys the user has.
    pub passkeys: u32,
    /// The applications the user lets sign them in.
    pub apps: Vec<AppView>,
}

/// An application the user granted access, as the account page lists it.
pub(crate) struct AppView {
    pub client_id: String,
    pub name: String,
    pub scopes: String,
    pub granted: String,
    pub last_used: String,
}

impl From<&crate::domain::oauth::GrantView> for AppView {
    fn from(view: &crate::domain::oauth::GrantView) -> Self {
        Self {
            client_id: view.consent.client_id.to_string(),
            name: view.client_name.clone(),
            scopes: view.consent.scopes.to_string(),
            granted: when(view.consent.granted_at),
            last_used: view
                .consent
                .last_used_at
                .map_or_else(|| "never".into(), when),
        }
    }
}

/// Two-step verification of the account: set it up, or turn it off.
#[derive(Template)]
#[template(path = "two_step.html", config = "src/inbound/console/askama.toml")]
pub(crate) struct TwoStep {
    pub chrome: Chrome,
    pub form: FormState,
    pub csrf: String,
    /// An authenticator app is set up.
    pub enabled: bool,
}

/// A new TOTP secret as the set-up page shows it.
pub(crate) struct NewSecret {
    /// The QR code of the `otpauth://` URI: SVG markup of our own making, for inline use.
    pub qr: Option<String>,
    /// The base32 secret in groups of four, for typing into an app.
    pub key: String,
}

/// Adding the account to an authenticator app, and confirming it with a first code.
#[derive(Template)]
#[template(
    path = "two_step_setup.html",
    config = "src/inbound/console/askama.toml"
)]
pub(crate) struct TwoStepSetup {
    pub chrome: Chrome,
    pub form: FormState,
    pub csrf: String,
    /// `None` when a code was wrong: the secret was shown before and is not kept here.
    pub secret: Option<NewSecret>,
}

/// The recovery codes, shown once.
#[derive(Template)]
#[template(
    path = "recovery_codes.html",
    config = "src/inbound/console/askama.toml"
)]
pub(crate) struct RecoveryCodes {
    pub chrome: Chrome,
    pub codes: Vec<String>,
}

/// The account's passkeys: the list, and adding one (with the script's help).
#[derive(Template)]
#[template(path = "passkeys.html", config = "src/inbound/console/askama.toml")]
pub(crate) struct Passkeys {
    pub chrome: Chrome,
    pub form: FormState,
    pub csrf: String,
    pub passkeys: Vec<PasskeyView>,
}

/// Renaming one passkey.
#[derive(Template)]
#[template(path = "passkey_name.html", config = "src/inbound/console/askama.toml")]
pub(crate) struct PasskeyName {
    pub chrome: Chrome,
    pub form: FormState,
    pub csrf: String,
    pub id: String,
}

#[derive(Template)]
#[template(path = "password.html", config = "src/inbound/console/askama.toml")]
pub(crate) struct Password {
    pub chrome: Chrome,
    pub form: FormState,
    pub csrf: String,
}

#[derive(Template)]
#[template(path = "email_change.html", config = "src/inbound/console/askama.toml")]
pub(crate) struct EmailChange {
    pub chrome: Chrome,
    pub form: FormState,
    pub csrf: String,
    pub current: String,
}

#[derive(Template)]
#[template(path = "admin_users.html", config = "src/inbound/console/askama.toml")]
pub(crate) struct AdminUsers {
    pub chrome: Chrome,
    /// The filters, as typed.
    pub form: FormState,
    pub users: Vec<UserView>,
    /// The query string of the next page, when there is one.
    pub next: Option<String>,
}

#[derive(Template)]
#[template(path = "admin_user.html", config = "src/inbound/console/askama.toml")]
pub(crate) struct AdminUser {
    pub chrome: Chrome,
    pub form: FormState,
    pub user: UserView,
    pub sessions: Vec<SessionView>,
    /// The second factors; `None`: only a password.
    pub factors: Option<String>,
    pub csrf: String,
}

#[derive(Template)]
#[template(path = "admin_delete.html", config = "src/inbound/console/askama.toml")]
pub(crate) struct AdminDelete {
    pub chrome: Chrome,
    pub form: FormState,
    pub user: UserView,
    pub csrf: String,
}

#[derive(Template)]
#[template(path = "admin_audit.html", config = "src/inbound/console/askama.toml")]
pub(crate) struct AdminAudit {
    pub chrome: Chrome,
    /// The filters, as typed.
    pub form: FormState,
    pub kinds: Vec<&'static str>,
    pub events: Vec<EventView>,
    pub next: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::describe_client;

    #[test]
    fn sessions_name_the_browser_and_system_as_people_say_them() {
        let chrome = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
                      Chrome/120.0.0.0 Safari/537.36";
        assert_eq!(describe_client(chrome), "Chrome on Linux");
        let firefox =
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0";
        assert_eq!(describe_client(firefox), "Firefox on Windows 10");
        // A client the parser does not know keeps its own words.
        assert_eq!(describe_client("reqwest/0.12"), "reqwest/0.12");
    }
}
