//! Passkeys: the account's list (add, rename, remove) and signing in with one. The use cases
//! are those of `/auth/passkeys/*`. What is the console's own is how a ceremony crosses a
//! page: its script (`passkeys.js`) fetches the options from an `.../options` route, a POST
//! guarded like any form and answered in JSON, and sends the browser's answer back in an
//! ordinary form, whose outcome is a page. Only adding and using a passkey need the script.

use std::sync::Arc;

use poem::http::StatusCode;
use poem::web::{Data, Path};
use poem::{Request, Response, handler};
use uuid::Uuid;

use super::Console;
use super::PageQuery;
use super::form_state::{self, FormState};
use super::forms::{Fields, Guard, Posted, signed_in_post, submitted};
use super::guard::{Visitor, safe_next, see_other};
use super::pages::{self, Chrome, PasskeyView};
use super::public::sign_in_form;
use crate::domain::Principal;
use crate::domain::mfa::passkey_name;
use crate::domain::service::{PasskeyError, Proof};
use crate::inbound::web::problem::{FieldError, Problem};

/// Words for the page's script to show instead of options, with `status`.
fn refusal(status: StatusCode, message: &str) -> Response {
    Response::builder()
        .status(status)
        .content_type("application/json")
        .body(serde_json::json!({ "message": message }).to_string())
}

/// A ceremony's options for the page's script, or why there are none, in the words a form
/// would show.
fn options(started: Result<String, PasskeyError>) -> Response {
    match started {
        Ok(json) => Response::builder()
            .content_type("application/json")
            .body(json),
        Err(err) => {
            let problem = Problem::from(err);
            refusal(problem.status, &form_state::alert(&problem))
        }
    }
}

fn name_problem(message: &str) -> Problem {
    Problem::validation(vec![FieldError {
        field: "name".to_owned(),
        message: message.to_owned(),
    }])
}

/// The name typed into `fields`, checked as the API checks it; `None` when none was typed.
fn typed_name(fields: &Fields) -> Result<Option<String>, Problem> {
    passkey_name(fields.get("name")).map_err(name_problem)
}

/// A passkey id from a path: anything that is no id names no passkey of anyone's.
fn passkey_id(id: &str) -> Result<Uuid, PasskeyError> {
    Uuid::parse_str(id).map_err(|_| PasskeyError::NotFound)
}

/// The account's passkeys, showing `form`'s failure if any.
async fn passkeys_page(
    console: &Console,
    visitor: &Visitor,
    principal: &Principal,
    form: FormState,
    done: Option<&str>,
) -> Response {
    let passkeys = match console.core.passkeys.passkeys(principal.user.id).await {
        Ok(passkeys) => passkeys,
        Err(err) => return console.failure(visitor, &Problem::from(err)),
    };
    let status = form.status();
    let page = pages::Passkeys {
        chrome: Chrome::new("Passkeys", visitor).noting(done),
        form,
        csrf: visitor.session_csrf().unwrap_or_default(),
        passkeys: passkeys.iter().map(PasskeyView::from).collect(),
    };
    console.page(visitor, &page, status)
}

#[handler]
pub(super) async fn settings(req: &Request, console: Data<&Arc<Console>>) -> Response {
    let done = PageQuery::of(req).done;
    let (visitor, principal) = or_page!(console.signed_in(req).await);
    passkeys_page(
        &console,
        &visitor,
        &principal,
        FormState::default(),
        done.as_deref(),
    )
    .await
}

/// Starts adding a passkey, as `POST /auth/passkeys/register/start` does, with the password
/// asked again. The name is checked here already: refused at the end, it would leave a passkey
/// on the device that signs in nowhere.
#[handler]
pub(super) async fn registration_options(
    req: &Request,
    console: Data<&Arc<Console>>,
    form: Posted,
) -> Response {
    let (_, principal, fields) = or_page!(signed_in_post(req, &console, form).await);
    if let Err(message) = passkey_name(fields.get("name")) {
        return refusal(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("Name {message}."),
        );
    }
    let proof = Proof::Password(fields.get("current_password"));
    options(
        console
            .core
            .passkeys
            .begin_passkey_registration(&principal, proof, &console.client(req))
            .await,
    )
}

/// Finishes adding a passkey, as `POST /auth/passkeys/register/finish` does.
#[handler]
pub(super) async fn add(req: &Request, console: Data<&Arc<Console>>, form: Posted) -> Response {
    let (visitor, principal, fields) = or_page!(signed_in_post(req, &console, form).await);
    let shown = FormState::default().keep("name", fields.get("name").trim());
    let added = async {
        let name = typed_name(&fields)?;
        console
            .core
            .passkeys
            .finish_passkey_registration(
                &principal,
                fields.get("credential"),
                name,
                &console.client(req),
            )
            .await
            .map_err(Problem::from)
    }
    .await;
    match added {
        Ok(_) => see_other("/console/account/passkeys?done=passkey-added"),
        Err(problem) => {
            passkeys_page(&console, &visitor, &principal, shown.failed(&problem), None).await
        }
    }
}

fn name_form(console: &Console, visitor: &Visitor, id: &str, form: FormState) -> Response {
    let status = form.status();
    let page = pages::PasskeyName {
        chrome: Chrome::new("Rename a passkey", visitor),
        form,
        csrf: visitor.session_csrf().unwrap_or_default(),
        id: id.to_owned(),
    };
    console.page(visitor, &page, status)
}

#[handler]
pub(super) async fn name_page(
    req: &Request,
    console: Data<&Arc<Console>>,
    id: Path<String>,
) -> Response {
    let (visitor, principal) = or_page!(console.signed_in(req).await);
    let passkeys = match console.core.passkeys.passkeys(principal.user.id).await {
        Ok(passkeys) => passkeys,
        Err(err) => return console.failure(&visitor, &Problem::from(err)),
    };
    let wanted = passkey_id(&id.0).ok();
    match passkeys.iter().find(|passkey| Some(passkey.id) == wanted) {
        Some(passkey) => name_form(
            &console,
            &visitor,
            &id.0,
            FormState::default().keep("name", &passkey.name),
        ),
        None => console.failure(&visitor, &Problem::from(PasskeyError::NotFound)),
    }
}

/// Renames one of the user's passkeys.
#[handler]
pub(super) async fn rename(
    req: &Request,
    console: Data<&Arc<Console>>,
    id: Path<String>,
    form: Posted,
) -> Response {
    let (visitor, principal, fields) = or_page!(signed_in_post(req, &console, form).await);
    let shown = FormState::default().keep("name", fields.get("name").trim());
    let renamed = async {
        let name = typed_name(&fields)?.ok_or_else(|| name_problem("must not be empty"))?;
        console
            .core
            .passkeys
            .rename_passkey(&principal, passkey_id(&id.0)?, &name)
            .await
            .map_err(Problem::from)
    }
    .await;
    match renamed {
        Ok(()) => see_other("/console/account/passkeys?done=passkey-renamed"),
        Err(problem) => name_form(&console, &visitor, &id.0, shown.failed(&problem)),
    }
}

/// Removes one of the user's passkeys, as `DELETE /auth/passkeys/{id}` does.
#[handler]
pub(super) async fn remove(
    req: &Request,
    console: Data<&Arc<Console>>,
    id: Path<String>,
    form: Posted,
) -> Response {
    let (visitor, principal, _) = or_page!(signed_in_post(req, &console, form).await);
    let removed = async {
        console
            .core
            .passkeys
            .remove_passkey(&principal, passkey_id(&id.0)?, &console.client(req))
            .await
    }
    .await;
    match removed {
        Ok(()) => see_other("/console/account/passkeys?done=passkey-removed"),
        Err(err) => {
            let form = FormState::default().failed(&Problem::from(err));
            passkeys_page(&console, &visitor, &principal, form, None).await
        }
    }
}

/// Starts a sign-in with a passkey, as `POST /auth/passkeys/login/start` does.
#[handler]
pub(super) async fn sign_in_options(
    req: &Request,
    console: Data<&Arc<Console>>,
    form: Posted,
) -> Response {
    let visitor = or_page!(console.visitor(req).await);
    or_page!(submitted(&console, req, &visitor, form, Guard::Visitor));
    options(
        console
            .core
            .passkeys
            .begin_passkey_login(&console.client(req))
            .await,
    )
}

/// Signs in with a passkey, as `POST /auth/passkeys/login/finish` does: a whole login, held
/// by the same cookie as a password's.
#[handler]
pub(super) async fn sign_in(req: &Request, console: Data<&Arc<Console>>, form: Posted) -> Response {
    let visitor = or_page!(console.visitor(req).await);
    let fields = or_page!(submitted(&console, req, &visitor, form, Guard::Visitor));
    let next = safe_next(fields.trimmed("next"));
    match console
        .core
        .passkeys
        .finish_passkey_sign_in_with_cookie(fields.get("credential"), console.client(req))
        .await
    {
        Ok(signed_in) => console.enter(&visitor, next, &signed_in),
        Err(err) => {
            let form = FormState::default().failed(&Problem::from(err));
            sign_in_form(&console, &visitor, form, next, None)
        }
    }
}
