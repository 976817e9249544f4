//! The web console: server-rendered pages under `/console` for people, a second inbound
//! adapter beside the JSON API and the command line.
//!
//! It calls the same use cases as the API and adds no rule of its own: sign-in opens a core
//! session held by a cookie (`CookieSessions::sign_in_with_cookie`), every error is turned into
//! words by the mapping the JSON API uses too (`web::errors`), and the pages are askama templates
//! compiled into the binary. What is its own is what a browser needs: cookies, CSRF tokens,
//! the `Origin` check ([`guard`]), and HTML, with one small script for what only a browser
//! can do: WebAuthn (`passkeys`).

// The console's helpers fail with the page to answer (`Result<_, Response>`), once per
// request, straight back to poem: boxing it would only add an allocation.
#![allow(clippy::result_large_err)]

/// The value of a `Result<T, Response>`, or an early return of its page: the handlers' `?`.
macro_rules! or_page {
    ($result:expr) => {
        match $result {
            Ok(value) => value,
            Err(page) => return page,
        }
    };
}

mod account;
mod admin;
mod admin_clients;
mod assets;
mod form_state;
mod forms;
pub mod guard;
mod pages;
mod passkeys;
mod provider;
mod public;
mod two_step;

use std::sync::Arc;

use askama::Template;
use poem::http::StatusCode;
use poem::{EndpointExt, IntoEndpoint, Request, Response, Route, get, post};
use serde::Deserialize;

use self::guard::{ConsoleSettings, Visitor, see_other};
use self::pages::{Chrome, message, render};
use crate::domain::service::CookieSession;
use crate::domain::{ClientInfo, Core, Principal, Role};
use crate::inbound::web::client::TrustedProxies;
use crate::inbound::web::problem::Problem;

/// What a console page's query may say.
#[derive(Debug, Default, Deserialize)]
struct PageQuery {
    /// A notice to show (one of a fixed set).
    pub done: Option<String>,
    /// Where to go after signing in.
    pub next: Option<String>,
    /// The token of a mailed link.
    pub token: Option<String>,
    /// The email to fill the sign-in form with (an application's `login_hint`).
    pub login_hint: Option<String>,
    /// Ask for the password even when signed in (an application asked for a fresh sign-in).
    pub reauth: Option<String>,
}

impl PageQuery {
    fn of(req: &Request) -> Self {
        req.params().unwrap_or_default()
    }
}

/// What every console handler holds.
pub(crate) struct Console {
    core: Arc<Core>,
    proxies: TrustedProxies,
    settings: ConsoleSettings,
}

impl Console {
    /// Who sent `req`; or, when the database does not answer, the page that says so.
    async fn visitor(&self, req: &Request) -> Result<Visitor, Response> {
        Visitor::read(self, req).await.map_err(|err| {
            let problem = Problem::from(err.0);
            message(
                problem.status,
                Chrome::anonymous("Unavailable"),
                &form_state::alert(&problem),
            )
        })
    }

    /// The signed-in visitor of `req`; anyone else is sent to sign in, and comes back here
    /// after (for a page they asked for by GET).
    async fn signed_in(&self, req: &Request) -> Result<(Visitor, Principal), Response> {
        let visitor = self.visitor(req).await?;
        match visitor.principal().cloned() {
            Some(principal) => Ok((visitor, principal)),
            None => {
                let target = if req.method() == poem::http::Method::GET {
                    // Nested at `/console`, the handlers see the path below it.
                    let below = req.uri().path_and_query().map_or("/", |p| p.as_str());
                    let path = format!("/console{below}");
                    format!("/console/sign-in?next={}", pages::encode(&path))
                } else {
                    "/console/sign-in".to_owned()
                };
                let mut response = see_other(&target);
                visitor.finish(&self.settings, &mut response);
                Err(response)
            }
        }
    }

    /// The signed-in admin of `req`; a user who is no admin gets a 403 page.
    async fn admin(&self, req: &Request) -> Result<(Visitor, Principal), Response> {
        let (visitor, principal) = self.signed_in(req).await?;
        if principal.user.role != Role::Admin {
            return Err(self.page(
                &visitor,
                &pages::Message {
                    chrome: Chrome::new("Administrators only", &visitor),
                    text: "This page is for administrators.".into(),
                },
                StatusCode::FORBIDDEN,
            ));
        }
        Ok((visitor, principal))
    }

    /// A page that only says what went wrong (an unknown user, an outage).
    fn failure(&self, visitor: &Visitor, problem: &Problem) -> Response {
        let title = if problem.status == StatusCode::NOT_FOUND {
            "Not found"
        } else {
            "Something went wrong"
        };
        self.page(
            visitor,
            &pages::Message {
                chrome: Chrome::new(title, visitor),
                text: form_state::alert(problem),
            },
            problem.status,
        )
    }

    /// `page` as the answer to `visitor`, with the cookies the visit needs.
    fn page(&self, visitor: &Visitor, page: &impl Template, status: StatusCode) -> Response {
        let mut response = render(page, status);
        visitor.finish(&self.settings, &mut response);
        response
    }

    fn client(&self, req: &Request) -> ClientInfo {
        self.proxies.client_info(req)
    }

    /// Signed in, by password alone or with a second step: the session cookie, and on to `next`.
    /// Bound for an application (`/oauth/authorize`), the way on is a page of its own: the
    /// redirect to the application must not follow this form's submission.
    fn enter(&self, visitor: &Visitor, next: &str, signed_in: &CookieSession) -> Response {
        let mut response = if next.starts_with("/oauth/") {
            provider::continue_page(next)
        } else {
            see_other(next)
        };
        let settings = &self.settings;
        response.headers_mut().append(
            poem::http::header::SET_COOKIE,
            settings.set_cookie(&settings.session_cookie(), Some(&signed_in.secret)),
        );
        visitor.finish(settings, &mut response);
        response
    }
}

/// The console's endpoints: its pages, to be nested at `/console`, and the OpenID provider's
/// pages for people, at `/oauth/authorize` and `/oauth/logout`.
pub struct ConsoleRoutes {
    pub pages: poem::endpoint::BoxEndpoint<'static, Response>,
    pub authorize: poem::endpoint::BoxEndpoint<'static, Response>,
    pub logout: poem::endpoint::BoxEndpoint<'static, Response>,
}

/// The console, on `core`.
pub fn routes(
    core: Arc<Core>,
    proxies: TrustedProxies,
    settings: ConsoleSettings,
) -> ConsoleRoutes {
    let console = Arc::new(Console {
        core,
        proxies,
        settings,
    });
    ConsoleRoutes {
        authorize: get(provider::authorize)
            .post(provider::answer_consent)
            .data(Arc::clone(&console))
            .map_to_response()
            .boxed(),
        logout: get(provider::logout)
            .data(Arc::clone(&console))
            .map_to_response()
            .boxed(),
        pages: pages(console).boxed(),
    }
}

/// The pages under `/console`.
fn pages(console: Arc<Console>) -> impl poem::Endpoint<Output = Response> {
    Route::new()
        .at("/", get(public::home))
        .at("/assets/console.css", get(assets::stylesheet))
        .at("/assets/passkeys.js", get(assets::passkeys_script))
        .at("/sign-in", get(public::sign_in_page).post(public::sign_in))
        .at("/sign-in/verify", post(two_step::verify_sign_in))
        .at("/sign-in/passkey", post(passkeys::sign_in))
        .at("/sign-in/passkey/options", post(passkeys::sign_in_options))
        .at(
            "/register",
            get(public::register_page).post(public::register),
        )
        .at("/forgot", get(public::forgot_page).post(public::forgot))
        .at("/reset", get(public::reset_page).post(public::reset))
        .at("/verify", get(public::verify_page).post(public::verify))
        .at(
            "/email",
            get(public::email_page).post(public::confirm_email),
        )
        .at("/sign-out", post(account::sign_out))
        .at("/account", get(account::overview))
        .at("/account/verification", post(account::send_verification))
        .at(
            "/account/password",
            get(account::password_page).post(account::change_password),
        )
        .at(
            "/account/email",
            get(account::email_page).post(account::change_email),
        )
        .at("/account/sessions/:id/end", post(account::end_session))
        .at("/account/apps/:client_id/revoke", post(account::revoke_app))
        .at("/account/two-step", get(two_step::settings))
        .at("/account/two-step/setup", post(two_step::set_up))
        .at("/account/two-step/confirm", post(two_step::confirm))
        .at("/account/two-step/off", post(two_step::turn_off))
        .at(
            "/account/passkeys",
            get(passkeys::settings).post(passkeys::add),
        )
        .at(
            "/account/passkeys/options",
            post(passkeys::registration_options),
        )
        .at(
            "/account/passkeys/:id/name",
            get(passkeys::name_page).post(passkeys::rename),
        )
        .at("/account/passkeys/:id/remove", post(passkeys::remove))
        .at("/admin/users", get(admin::user_list))
        .at(
            "/admin/users/:id",
            get(admin::user_detail).post(admin::update_user),
        )
        .at("/admin/users/:id/sessions/end", post(admin::end_sessions))
        .at("/admin/users/:id/reset-link", post(admin::send_reset_link))
        .at(
            "/admin/users/:id/two-step/reset",
            post(admin::reset_two_step),
        )
        .at(
            "/admin/users/:id/delete",
            get(admin::delete_page).post(admin::delete_user),
        )
        .at("/admin/audit", get(admin::audit_log))
        .at(
            "/admin/clients",
            get(admin_clients::client_list).post(admin_clients::create_client),
        )
        .at(
            "/admin/clients/:id/secret",
            post(admin_clients::rotate_secret),
        )
        .at(
            "/admin/clients/:id/delete",
            post(admin_clients::delete_client),
        )
        .data(console)
        // A person who mistypes a console address gets a page, not a JSON problem.
        .catch_error(|_: poem::error::NotFoundError| async {
            message(
                StatusCode::NOT_FOUND,
                Chrome::anonymous("Not found"),
                "There is no such page.",
            )
        })
        .into_endpoint()
}

#[cfg(test)]
mod tests;
