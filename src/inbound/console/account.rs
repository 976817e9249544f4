//! The signed-in user's pages: the account (profile, sessions), password, email, sign-out.

use std::sync::Arc;

use poem::http::{StatusCode, header};
use poem::web::{Data, Path};
use poem::{Request, Response, handler};
use uuid::Uuid;

use super::Console;
use super::PageQuery;
use super::form_state::FormState;
use super::forms::{Posted, signed_in_post};
use super::guard::{Visitor, see_other};
use super::pages::{self, Chrome, SessionView, UserView};
use crate::domain::oauth::ClientId;
use crate::domain::{Email, Password, Principal, SessionId};
use crate::inbound::web::problem::{FieldErrors, Problem};

/// The account page, showing `form`'s failure if any.
async fn account_page(
    console: &Console,
    visitor: &Visitor,
    principal: &Principal,
    form: FormState,
    done: Option<&str>,
) -> Response {
    let sessions = match console.core.sessions.list_sessions(principal).await {
        Ok(sessions) => sessions,
        Err(err) => return console.failure(visitor, &Problem::from(err)),
    };
    let factors = match console.core.factors.factors(principal.user.id).await {
        Ok(factors) => factors,
        Err(err) => return console.failure(visitor, &Problem::from(err)),
    };
    let apps = match console.core.authorizations.grants(principal.user.id).await {
        Ok(apps) => apps,
        Err(err) => return console.failure(visitor, &Problem::from(err)),
    };
    let status = form.status();
    let page = pages::Account {
        chrome: Chrome::new("Your account", visitor).noting(done),
        form,
        user: UserView::from(&principal.user),
        sessions: sessions
            .iter()
            .map(|s| SessionView::new(s, principal.session_id))
            .collect(),
        csrf: visitor.session_csrf().unwrap_or_default(),
        mail: console.core.delivery.mail_configured(),
        two_step: factors.totp,
        passkeys: factors.passkeys,
        apps: apps.iter().map(pages::AppView::from).collect(),
    };
    console.page(visitor, &page, status)
}

#[handler]
pub(super) async fn overview(req: &Request, console: Data<&Arc<Console>>) -> Response {
    let query = PageQuery::of(req);
    match console.signed_in(req).await {
        Ok((visitor, principal)) => {
            account_page(
                &console,
                &visitor,
                &principal,
                FormState::default(),
                query.done.as_deref(),
            )
            .await
        }
        Err(page) => page,
    }
}

/// "Send again": a new verification link, as `POST /auth/verify/request` does.
#[handler]
pub(super) async fn send_verification(
    req: &Request,
    console: Data<&Arc<Console>>,
    form: Posted,
) -> Response {
    let (visitor, principal, _) = or_page!(signed_in_post(req, &console, form).await);
    match console
        .core
        .recovery
        .request_verification(&principal, &console.client(req))
        .await
    {
        Ok(()) => see_other("/console/account?done=verification-sent"),
        Err(err) => {
            let form = FormState::default().failed(&Problem::from(err));
            account_page(&console, &visitor, &principal, form, None).await
        }
    }
}

/// Ends one of the user's other sessions, as `DELETE /auth/sessions/{id}` does.
#[handler]
pub(super) async fn end_session(
    req: &Request,
    console: Data<&Arc<Console>>,
    id: Path<String>,
    form: Posted,
) -> Response {
    let (visitor, principal, _) = or_page!(signed_in_post(req, &console, form).await);
    let ended = match Uuid::parse_str(&id.0) {
        Ok(id) => console
            .core
            .sessions
            .end_session(&principal, SessionId(id), &console.client(req))
            .await
            .map_err(Problem::from),
        Err(_) => Err(Problem::new(StatusCode::NOT_FOUND, "Session not found")),
    };
    match ended {
        Ok(()) => see_other("/console/account?done=session-ended"),
        Err(problem) => {
            let form = FormState::default().failed(&problem);
            account_page(&console, &visitor, &principal, form, None).await
        }
    }
}

/// "Revoke": the application's consent and every token it holds for the user end, as
/// `DELETE /auth/grants/{client_id}` does.
#[handler]
pub(super) async fn revoke_app(
    req: &Request,
    console: Data<&Arc<Console>>,
    client_id: Path<String>,
    form: Posted,
) -> Response {
    let (visitor, principal, _) = or_page!(signed_in_post(req, &console, form).await);
    let revoked = console
        .core
        .authorizations
        .revoke_grant(&principal, &ClientId(client_id.0), &console.client(req))
        .await
        .map_err(Problem::from);
    match revoked {
        Ok(true) => see_other("/console/account?done=app-revoked"),
        Ok(false) => {
            let problem = Problem::new(StatusCode::NOT_FOUND, "Grant not found");
            account_page(
                &console,
                &visitor,
                &principal,
                FormState::default().failed(&problem),
                None,
            )
            .await
        }
        Err(problem) => {
            let form = FormState::default().failed(&problem);
            account_page(&console, &visitor, &principal, form, None).await
        }
    }
}

/// Ends this session, as `POST /auth/logout` does, and forgets the cookie.
#[handler]
pub(super) async fn sign_out(
    req: &Request,
    console: Data<&Arc<Console>>,
    form: Posted,
) -> Response {
    let (_, principal, _) = or_page!(signed_in_post(req, &console, form).await);
    if let Err(err) = console
        .core
        .sessions
        .logout(&principal, &console.client(req))
        .await
    {
        let problem = Problem::from(err);
        return pages::message(
            problem.status,
            Chrome::anonymous("Sign out"),
            &super::form_state::alert(&problem),
        );
    }
    let settings = &console.settings;
    let mut response = see_other("/console/sign-in?done=signed-out");
    response.headers_mut().append(
        header::SET_COOKIE,
        settings.set_cookie(&settings.session_cookie(), None),
    );
    response
}

fn password_form(console: &Console, visitor: &Visitor, form: FormState) -> Response {
    let status = form.status();
    let page = pages::Password {
        chrome: Chrome::new("Change your password", visitor),
        form,
        csrf: visitor.session_csrf().unwrap_or_default(),
    };
    console.page(visitor, &page, status)
}

#[handler]
pub(super) async fn password_page(req: &Request, console: Data<&Arc<Console>>) -> Response {
    match console.signed_in(req).await {
        Ok((visitor, _)) => password_form(&console, &visitor, FormState::default()),
        Err(page) => page,
    }
}

/// Changes the password as `POST /auth/password` does: the other sessions end.
#[handler]
pub(super) async fn change_password(
    req: &Request,
    console: Data<&Arc<Console>>,
    form: Posted,
) -> Response {
    let (visitor, principal, fields) = or_page!(signed_in_post(req, &console, form).await);
    let mut checks = FieldErrors::default();
    let new = checks.check("new_password", Password::parse(fields.get("new_password")));
    let new = match checks.finish(new) {
        Ok(new) => new,
        Err(problem) => {
            return password_form(&console, &visitor, FormState::default().failed(&problem));
        }
    };
    match console
        .core
        .sessions
        .change_password(
            &principal,
            fields.get("current_password"),
            new,
            &console.client(req),
        )
        .await
    {
        Ok(()) => see_other("/console/account?done=password"),
        Err(err) => password_form(
            &console,
            &visitor,
            FormState::default().failed(&Problem::from(err)),
        ),
    }
}

fn email_form(
    console: &Console,
    visitor: &Visitor,
    principal: &Principal,
    form: FormState,
) -> Response {
    let status = form.status();
    let page = pages::EmailChange {
        chrome: Chrome::new("Change your email address", visitor),
        form,
        csrf: visitor.session_csrf().unwrap_or_default(),
        current: principal.user.email.as_str().to_owned(),
    };
    console.page(visitor, &page, status)
}

#[handler]
pub(super) async fn email_page(req: &Request, console: Data<&Arc<Console>>) -> Response {
    match console.signed_in(req).await {
        Ok((visitor, principal)) => {
            email_form(&console, &visitor, &principal, FormState::default())
        }
        Err(page) => page,
    }
}

/// Asks for an email change as `POST /auth/email` does: a link goes to the new address.
#[handler]
pub(super) async fn change_email(
    req: &Request,
    console: Data<&Arc<Console>>,
    form: Posted,
) -> Response {
    let (visitor, principal, fields) = or_page!(signed_in_post(req, &console, form).await);
    let typed = fields.get("new_email").trim();
    let shown = FormState::default().keep("new_email", typed);
    let mut checks = FieldErrors::default();
    let new_email = checks.check("new_email", Email::parse(typed));
    let new_email = match checks.finish(new_email) {
        Ok(email) => email,
        Err(problem) => return email_form(&console, &visitor, &principal, shown.failed(&problem)),
    };
    match console
        .core
        .recovery
        .request_email_change(
            &principal,
            new_email,
            fields.get("current_password"),
            &console.client(req),
        )
        .await
    {
        Ok(()) => see_other("/console/account?done=email-change-sent"),
        Err(err) => email_form(
            &console,
            &visitor,
            &principal,
            shown.failed(&Problem::from(err)),
        ),
    }
}
