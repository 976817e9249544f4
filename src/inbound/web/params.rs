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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::properties::config;

    proptest! {
        #![proptest_config(config(512))]

        #[test]
        fn a_user_id_reads_back_as_written_and_nothing_else_is_one(
            id in 1..=i64::MAX,
            text in prop_oneof![any::<String>(), "[+-]?[0-9]{1,20}", "\\s?[0-9]{1,5}\\s?"],
        ) {
            prop_assert_eq!(parse_id(&id.to_string()), Ok(id));
            prop_assert_eq!(user_id(&id.to_string()).ok(), Some(UserId(id)));
            match parse_id(&text) {
                Ok(parsed) => {
                    prop_assert!(parsed > 0);
                    prop_assert_eq!(text.parse::<i64>(), Ok(parsed));
                }
                Err(_) => prop_assert!(text.parse::<i64>().map_or(true, |n| n <= 0)),
            }
        }

        #[test]
        fn a_search_is_bounded_lower_cased_and_free_of_control_characters(
            text in prop_oneof![any::<String>(), "\\PC{190,210}", "[A-Za-zİß\\x00\\n]{0,10}"]
        ) {
            match parse_search(&text) {
                Ok(search) => {
                    prop_assert!(text.chars().count() <= MAX_QUERY_CHARS);
                    prop_assert!(!search.chars().any(char::is_control));
                    prop_assert_eq!(search.to_lowercase(), search);
                }
                Err(_) => prop_assert!(
                    text.chars().count() > MAX_QUERY_CHARS || text.chars().any(char::is_control)
                ),
            }
        }

        #[test]
        fn flags_and_roles_read_back_their_own_names_only(text in "\\PC{0,8}", flag: bool) {
            prop_assert_eq!(parse_bool(&flag.to_string()), Ok(flag));
            for role in [Role::User, Role::Admin] {
                prop_assert_eq!(parse_role(role.as_str()), Ok(role));
            }
            if let Ok(flag) = parse_bool(&text) {
                prop_assert_eq!(flag.to_string(), text.clone());
            }
            if let Ok(role) = parse_role(&text) {
                prop_assert_eq!(role.as_str(), text);
            }
        }
    }
}
