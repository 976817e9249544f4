//! Forms: reading what a browser sent, checking that it came from our page, and showing what
//! was wrong with it on the form itself, in the words of the API.

use std::collections::HashMap;

use poem::http::StatusCode;
use poem::web::Form;
use poem::{Request, Response};

use super::Console;
use super::guard::Visitor;
use super::pages::{self, Chrome};
use crate::domain::Principal;

/// A POST's body, as a handler takes it: a form, or why it is none.
pub(super) type Posted = poem::Result<Form<HashMap<String, String>>>;

/// The fields of a submitted form, by name.
pub(super) struct Fields(HashMap<String, String>);

impl Fields {
    /// A field's value; an absent field is empty.
    pub(super) fn get(&self, name: &str) -> &str {
        self.0.get(name).map_or("", String::as_str)
    }

    /// A field's value with surrounding white space removed; `None` when that leaves nothing.
    pub(super) fn trimmed(&self, name: &str) -> Option<&str> {
        Some(self.get(name).trim()).filter(|v| !v.is_empty())
    }

    /// Whether the form has a field `name`, even an empty one: which of two forms posting to
    /// one place was sent.
    pub(super) fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

/// Which token a form must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Guard {
    /// A signed-in user's form: the token of their session.
    Session,
    /// A form anyone may send: the token of the browser's visitor cookie.
    Visitor,
}

/// The form of a POST, once it is known to come from one of our pages: its `Origin` is ours
/// and it carries the right CSRF token. Anything else gets a 403 page (or a 400 for a body
/// that is no form at all), and no use case runs.
pub(super) fn submitted(
    console: &Console,
    req: &Request,
    visitor: &Visitor,
    form: Posted,
    guard: Guard,
) -> Result<Fields, poem::Response> {
    let Ok(Form(fields)) = form else {
        return Err(pages::message(
            StatusCode::BAD_REQUEST,
            Chrome::new("Bad request", visitor),
            "This request is not a form this page sends.",
        ));
    };
    let fields = Fields(fields);
    let token = fields.get("csrf");
    let token_ok = match guard {
        Guard::Session => visitor.session_token_matches(token),
        Guard::Visitor => visitor.visitor_token_matches(token),
    };
    let origin_ok = console.settings.same_origin(req);
    if origin_ok && token_ok {
        return Ok(fields);
    }
    tracing::warn!(
        path = %req.uri().path(),
        origin_ok,
        token_ok,
        origin = ?req.headers().get(poem::http::header::ORIGIN),
        "console form refused"
    );
    Err(pages::message(
        StatusCode::FORBIDDEN,
        Chrome::new("Form refused", visitor),
        "This form was not sent from this site, or it has expired. Go back, reload the page \
         and try again.",
    ))
}

/// A signed-in POST: the visitor, the user and the form, once it passed the guard.
pub(super) async fn signed_in_post(
    req: &Request,
    console: &Console,
    form: Posted,
) -> Result<(Visitor, Principal, Fields), Response> {
    let (visitor, principal) = console.signed_in(req).await?;
    let fields = submitted(console, req, &visitor, form, Guard::Session)?;
    Ok((visitor, principal, fields))
}
