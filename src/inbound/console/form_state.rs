//! A submitted form as a page shows it again: what was typed (never a password), and what is
//! wrong with it, in the words of the API's problem documents.

use poem::http::StatusCode;

use crate::inbound::web::problem::Problem;

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
