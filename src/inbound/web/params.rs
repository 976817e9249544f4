//! Parsers of the text parameters the JSON API and the console both take: each says in words
//! what a bad value must be, for a 422 (or a form's message) that names the field.

use poem::http::StatusCode;

use super::problem::{FieldErrors, Problem};
use crate::domain::{Role, UserId};

/// The longest search text.
const MAX_QUERY_CHARS: usize = 200;

/// The text to find in emails and names, lower-cased; bounded, since it is matched anywhere.
/// No stored email or name holds a control character, and PostgreSQL refuses a NUL in text
/// outright, so one is the caller's mistake, not a search.
pub fn parse_search(text: &str) -> Result<String, String> {
    if text.chars().count() > MAX_QUERY_CHARS {
        Err(format!("must be at most {MAX_QUERY_CHARS} characters"))
    } else if text.chars().any(char::is_control) {
        Err("must not contain control characters".into())
    } else {
        Ok(text.to_lowercase())
    }
}

pub fn parse_bool(text: &str) -> Result<bool, &'static str> {
    match text {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("must be true or false"),
    }
}

pub fn parse_role(text: &str) -> Result<Role, &'static str> {
    text.parse::<Role>().map_err(|_| "must be user or admin")
}

pub fn parse_id(text: &str) -> Result<i64, &'static str> {
    text.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or("must be a user id")
}

/// Parses an optional parameter with `parse`, noting a failure under `name`. An empty value
/// (`?role=`, as a form sends an unset field) is no value.
pub fn optional<T, E: std::fmt::Display>(
    fields: &mut FieldErrors,
    name: &str,
    value: Option<&str>,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Option<T> {
    value
        .filter(|text| !text.is_empty())
        .and_then(|text| fields.check(name, parse(text)))
}

/// A user id from a path: anything else is an unknown user.
pub fn user_id(id: &str) -> Result<UserId, Problem> {
    parse_id(id)
        .map(UserId)
        .map_err(|_| Problem::new(StatusCode::NOT_FOUND, "User not found"))
}
