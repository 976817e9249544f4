//! Forms: reading what a browser sent, checking that it came from our page, and showing what
//! was wrong with it on the form itself, in the words of the API.

use std::collections::HashMap;

use poem::Request;
use poem::http::StatusCode;
use poem::web::Form;

use super::Console;
use super::guard::Visitor;
use super::pages::{self, Chrome};
use crate::inbound::web::problem::Problem;

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

/// What is wrong with one field.
#[derive(Debug)]
struct FieldFailure {
    field: String,
    message: String,
    /// The message is a sentence of its own ("Invalid code."), not what the value must be
    /// ("must be an email address"), which reads after the field's label.
    sentence: bool,
}

/// A form as a page shows it: what was typed (never a password), and what is wrong with it.
#[derive(Debug, Default)]
pub(crate) struct FormState {
    values: Vec<(&'static str, String)>,
    errors: Vec<FieldFailure>,
    /// What went wrong with the form as a whole.
    pub alert: Option<String>,
    status: Option<StatusCode>,
}

impl FormState {
    /// `field` shows `value` again.
    pub(super) fn keep(mut self, field: &'static str, value: &str) -> Self {
        self.values.push((field, value.to_owned()));
        self
    }

    /// The failure of a use case: the fields it names, or one message for the whole form.
    pub(super) fn failed(mut self, problem: &Problem) -> Self {
        self.status = Some(problem.status);
        if problem.errors.is_empty() {
            self.alert = Some(alert(problem));
        } else {
            self.errors = problem
                .errors
                .iter()
                .map(|e| FieldFailure {
                    field: e.field.clone(),
                    message: e.message.clone(),
                    sentence: false,
                })
                .collect();
        }
        self
    }

    /// The failure of a use case that found `field`'s value wrong and said so for the whole
    /// request (a wrong code, a wrong password): its words go on the field, where the fix is.
    pub(super) fn failed_on(mut self, field: &str, problem: &Problem) -> Self {
        self.status = Some(problem.status);
        self.errors.push(FieldFailure {
            field: field.to_owned(),
            message: alert(problem),
            sentence: true,
        });
        self
    }

    pub(crate) fn value(&self, field: &str) -> &str {
        self.values
            .iter()
            .find(|(name, _)| *name == field)
            .map_or("", |(_, value)| value.as_str())
    }

    /// What is wrong with `field`, in words for the page, where the field reads as `label`.
    pub(crate) fn error(&self, field: &str, label: &str) -> Option<String> {
        self.errors.iter().find(|e| e.field == field).map(|e| {
            if e.sentence {
                e.message.clone()
            } else {
                format!("{label} {}", e.message)
            }
        })
    }

    /// The status of a page showing this form: the API's, but never 401 (a page has no
    /// authentication challenge to offer); 200 when nothing failed.
    pub(super) fn status(&self) -> StatusCode {
        match self.status {
            Some(StatusCode::UNAUTHORIZED) => StatusCode::BAD_REQUEST,
            Some(status) => status,
            None => StatusCode::OK,
        }
    }

    /// Whether any field failed: the page says so at the top, for screen readers.
    pub(crate) fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }
}

/// The words for a failure that is not one field's: the API's `detail` (fixed texts of ours,
/// never a raw error), and not even that for an internal error.
pub(super) fn alert(problem: &Problem) -> String {
    if problem.status == StatusCode::INTERNAL_SERVER_ERROR {
        return "Something went wrong on our side. Please try again in a moment.".into();
    }
    match problem.retry_after {
        Some(seconds) if problem.status == StatusCode::TOO_MANY_REQUESTS => {
            format!("Too many attempts. Please wait {seconds} seconds and try again.")
        }
        _ => format!("{}.", problem.detail.trim_end_matches('.')),
    }
}
