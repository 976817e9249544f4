//! The pages anyone may open: sign in, register, forgot password, and the targets of the
//! mailed links (reset a password, verify an address, confirm a new one).

use std::sync::Arc;

use poem::http::StatusCode;
use poem::web::Data;
use poem::{Request, Response, handler};

use super::form_state::FormState;
use super::forms::{Guard, Posted, submitted};
use super::guard::{Visitor, safe_next, see_other};
use super::pages::{self, Chrome, ConfirmLink, Forgot, Register, Reset, SignIn};
use super::two_step::second_step_form;
use super::{Console, PageQuery};
use crate::domain::service::CookieSignIn;
use crate::domain::{Email, FullName, Password};
use crate::inbound::web::metrics::record_login;
use crate::inbound::web::problem::{FieldErrors, Problem};

/// `/console`: the account for a signed-in visitor, sign-in for anyone else.
#[handler]
pub(super) async fn home(req: &Request, console: Data<&Arc<Console>>) -> Response {
    let visitor = or_page!(console.visitor(req).await);
    let target = if visitor.principal().is_some() {
        "/console/account"
    } else {
        "/console/sign-in"
    };
    let mut response = see_other(target);
    visitor.finish(&console.settings, &mut response);
    response
}

pub(super) fn sign_in_form(
    console: &Console,
    visitor: &Visitor,
    form: FormState,
    next: &str,
    done: Option<&str>,
) -> Response {
    let status = form.status();
    let page = SignIn {
        chrome: Chrome::new("Sign in", visitor).noting(done),
        form,
        csrf: visitor.visitor_csrf(),
        next: next.to_owned(),
    };
    console.page(visitor, &page, status)
}

#[handler]
pub(super) async fn sign_in_page(req: &Request, console: Data<&Arc<Console>>) -> Response {
    let query = PageQuery::of(req);
    let visitor = or_page!(console.visitor(req).await);
    let next = safe_next(query.next.as_deref());
    if visitor.principal().is_some() && query.reauth.is_none() {
        return see_other(next);
    }
    let form = match &query.login_hint {
        Some(hint) => FormState::default().keep("email", hint.trim()),
        None => FormState::default(),
    };
    sign_in_form(&console, &visitor, form, next, query.done.as_deref())
}

/// Checks the password as `POST /auth/login` does (same limits, same delay after failures)
/// and opens a session whose only trace in the browser is an `HttpOnly` cookie; a user with
/// an authenticator app is asked for a code first, on a page that holds the pending login.
#[handler]
pub(super) async fn sign_in(req: &Request, console: Data<&Arc<Console>>, form: Posted) -> Response {
    let visitor = or_page!(console.visitor(req).await);
    let fields = or_page!(submitted(&console, req, &visitor, form, Guard::Visitor));
    let next = safe_next(fields.trimmed("next"));
    let typed = fields.get("email").trim();
    let shown = FormState::default().keep("email", typed);
    let mut checks = FieldErrors::default();
    let email = checks.check("email", Email::parse(typed));
    let email = match checks.finish(email) {
        Ok(email) => email,
        Err(problem) => {
            return sign_in_form(&console, &visitor, shown.failed(&problem), next, None);
        }
    };
    let result = console
        .core
        .cookies
        .sign_in_with_cookie(&email, fields.get("password"), console.client(req))
        .await;
    record_login(&result);
    match result {
        Ok(CookieSignIn::Done(signed_in)) => console.enter(&visitor, next, &signed_in),
        Ok(CookieSignIn::SecondFactor(pending)) => second_step_form(
            &console,
            &visitor,
            FormState::default(),
            &pending.mfa_token,
            next,
        ),
        Err(err) => sign_in_form(
            &console,
            &visitor,
            shown.failed(&Problem::from(err)),
            next,
            None,
        ),
    }
}

fn register_form(console: &Console, visitor: &Visitor, form: FormState) -> Response {
    let status = form.status();
    let page = Register {
        chrome: Chrome::new("Create an account", visitor),
        form,
        csrf: visitor.visitor_csrf(),
    };
    console.page(visitor, &page, status)
}

#[handler]
pub(super) async fn register_page(req: &Request, console: Data<&Arc<Console>>) -> Response {
    match console.visitor(req).await {
        Ok(visitor) => register_form(&console, &visitor, FormState::default()),
        Err(page) => page,
    }
}

/// Registers as `POST /auth/register` does; the new user then signs in.
#[handler]
pub(super) async fn register(
    req: &Request,
    console: Data<&Arc<Console>>,
    form: Posted,
) -> Response {
    let visitor = or_page!(console.visitor(req).await);
    let fields = or_page!(submitted(&console, req, &visitor, form, Guard::Visitor));
    let shown = FormState::default()
        .keep("email", fields.get("email").trim())
        .keep("full_name", fields.get("full_name").trim());
    let mut checks = FieldErrors::default();
    let email = checks.check("email", Email::parse(fields.get("email").trim()));
    let password = checks.check("password", Password::parse(fields.get("password")));
    let full_name = match fields.trimmed("full_name") {
        None => Some(None),
        Some(name) => checks.check("full_name", FullName::parse(name)).map(Some),
    };
    let (email, password, full_name) = match checks.finish(
        email
            .zip(password)
            .zip(full_name)
            .map(|((e, p), n)| (e, p, n)),
    ) {
        Ok(parsed) => parsed,
        Err(problem) => return register_form(&console, &visitor, shown.failed(&problem)),
    };
    match console
        .core
        .accounts
        .register(email, password, full_name, &console.client(req))
        .await
    {
        Ok(_) => see_other("/console/sign-in?done=registered"),
        Err(err) => register_form(&console, &visitor, shown.failed(&Problem::from(err))),
    }
}

fn forgot_form(
    console: &Console,
    visitor: &Visitor,
    form: FormState,
    done: Option<&str>,
) -> Response {
    let status = form.status();
    let page = Forgot {
        chrome: Chrome::new("Forgot your password?", visitor).noting(done),
        form,
        csrf: visitor.visitor_csrf(),
    };
    console.page(visitor, &page, status)
}

#[handler]
pub(super) async fn forgot_page(req: &Request, console: Data<&Arc<Console>>) -> Response {
    let query = PageQuery::of(req);
    match console.visitor(req).await {
        Ok(visitor) => forgot_form(
            &console,
            &visitor,
            FormState::default(),
            query.done.as_deref(),
        ),
        Err(page) => page,
    }
}

/// Asks for a reset link as `POST /auth/password/forgot` does: the same answer whether or not
/// the address has an account.
#[handler]
pub(super) async fn forgot(req: &Request, console: Data<&Arc<Console>>, form: Posted) -> Response {
    let visitor = or_page!(console.visitor(req).await);
    let fields = or_page!(submitted(&console, req, &visitor, form, Guard::Visitor));
    let shown = FormState::default().keep("email", fields.get("email").trim());
    let mut checks = FieldErrors::default();
    let email = checks.check("email", Email::parse(fields.get("email").trim()));
    let email = match checks.finish(email) {
        Ok(email) => email,
        Err(problem) => return forgot_form(&console, &visitor, shown.failed(&problem), None),
    };
    match console
        .core
        .recovery
        .forgot_password(email, &console.client(req))
        .await
    {
        Ok(()) => see_other("/console/forgot?done=mail-sent"),
        Err(err) => forgot_form(&console, &visitor, shown.failed(&Problem::from(err)), None),
    }
}

/// A mailed link without its token: nothing to do.
fn incomplete_link(console: &Console, visitor: &Visitor) -> Response {
    console.page(
        visitor,
        &pages::Message {
            chrome: Chrome::new("Incomplete link", visitor),
            text:
                "This link is incomplete. Open the whole link from the mail, or ask for a new one."
                    .into(),
        },
        StatusCode::BAD_REQUEST,
    )
}

fn reset_form(console: &Console, visitor: &Visitor, form: FormState, token: &str) -> Response {
    let status = form.status();
    let page = Reset {
        chrome: Chrome::new("Choose a new password", visitor),
        form,
        csrf: visitor.visitor_csrf(),
        token: token.to_owned(),
    };
    console.page(visitor, &page, status)
}

/// The target of the reset link: a form for the new password (opening it spends nothing).
#[handler]
pub(super) async fn reset_page(req: &Request, console: Data<&Arc<Console>>) -> Response {
    let query = PageQuery::of(req);
    let visitor = or_page!(console.visitor(req).await);
    match query.token.as_deref().filter(|t| !t.is_empty()) {
        Some(token) => reset_form(&console, &visitor, FormState::default(), token),
        None => incomplete_link(&console, &visitor),
    }
}

#[handler]
pub(super) async fn reset(req: &Request, console: Data<&Arc<Console>>, form: Posted) -> Response {
    let visitor = or_page!(console.visitor(req).await);
    let fields = or_page!(submitted(&console, req, &visitor, form, Guard::Visitor));
    let token = fields.get("token");
    let mut checks = FieldErrors::default();
    let password = checks.check("new_password", Password::parse(fields.get("new_password")));
    let password = match checks.finish(password) {
        Ok(password) => password,
        Err(problem) => {
            return reset_form(
                &console,
                &visitor,
                FormState::default().failed(&problem),
                token,
            );
        }
    };
    match console
        .core
        .recovery
        .reset_password(token, password, &console.client(req))
        .await
    {
        Ok(()) => see_other("/console/sign-in?done=reset"),
        Err(err) => reset_form(
            &console,
            &visitor,
            FormState::default().failed(&Problem::from(err)),
            token,
        ),
    }
}

/// What a mailed confirmation link is for.
#[derive(Clone, Copy)]
enum LinkKind {
    Verify,
    EmailChange,
}

impl LinkKind {
    fn page(self, visitor: &Visitor, form: FormState, token: &str) -> ConfirmLink {
        let (title, action, lead, button) = match self {
            Self::Verify => (
                "Verify your email address",
                "/console/verify",
                "Confirm that this address is yours.",
                "Verify my address",
            ),
            Self::EmailChange => (
                "Confirm your new email address",
                "/console/email",
                "Confirm the change: your account then uses this address, and your other \
                 sessions end.",
                "Confirm the new address",
            ),
        };
        ConfirmLink {
            chrome: Chrome::new(title, visitor),
            form,
            csrf: visitor.visitor_csrf(),
            token: token.to_owned(),
            action,
            lead,
            button,
        }
    }
}

async fn link_page(req: &Request, console: &Console, kind: LinkKind) -> Response {
    let query = PageQuery::of(req);
    let visitor = or_page!(console.visitor(req).await);
    match query.token.as_deref().filter(|t| !t.is_empty()) {
        Some(token) => console.page(
            &visitor,
            &kind.page(&visitor, FormState::default(), token),
            StatusCode::OK,
        ),
        None => incomplete_link(console, &visitor),
    }
}

async fn redeem_link(req: &Request, console: &Console, form: Posted, kind: LinkKind) -> Response {
    let visitor = or_page!(console.visitor(req).await);
    let fields = or_page!(submitted(console, req, &visitor, form, Guard::Visitor));
    let token = fields.get("token");
    let (result, done) = match kind {
        LinkKind::Verify => (console.core.recovery.verify_email(token).await, "verified"),
        LinkKind::EmailChange => (
            console.core.recovery.confirm_email_change(token).await,
            "email-changed",
        ),
    };
    match result {
        Ok(_) if visitor.principal().is_some() => {
            see_other(&format!("/console/account?done={done}"))
        }
        Ok(_) => see_other(&format!("/console/sign-in?done={done}")),
        Err(err) => {
            let form = FormState::default().failed(&Problem::from(err));
            let status = form.status();
            console.page(&visitor, &kind.page(&visitor, form, token), status)
        }
    }
}

/// The target of the verification link: a button, since mail scanners open links.
#[handler]
pub(super) async fn verify_page(req: &Request, console: Data<&Arc<Console>>) -> Response {
    link_page(req, &console, LinkKind::Verify).await
}

#[handler]
pub(super) async fn verify(req: &Request, console: Data<&Arc<Console>>, form: Posted) -> Response {
    redeem_link(req, &console, form, LinkKind::Verify).await
}

/// The target of the email-change link.
#[handler]
pub(super) async fn email_page(req: &Request, console: Data<&Arc<Console>>) -> Response {
    link_page(req, &console, LinkKind::EmailChange).await
}

#[handler]
pub(super) async fn confirm_email(
    req: &Request,
    console: Data<&Arc<Console>>,
    form: Posted,
) -> Response {
    redeem_link(req, &console, form, LinkKind::EmailChange).await
}
