//! A JSON request body that fails with a 422 naming the field at fault.
//!
//! poem-openapi's own `Json` answers a bad body with a 400 whose text names no field; clients of
//! the old service expect 422 and a list of failing fields.

use poem::{Request, RequestBody};
use poem_openapi::error::ContentTypeError;
use poem_openapi::payload::{ParsePayload, Payload};
use poem_openapi::registry::{MetaMediaType, MetaRequest, MetaSchemaRef, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions};
use serde::de::DeserializeOwned;

use crate::inbound::web::problem::{FieldError, Problem};

/// A JSON body of type `T`: documented from `T`'s schema, parsed with serde.
pub struct JsonBody<T>(pub T);

impl<T: Type> Payload for JsonBody<T> {
    const CONTENT_TYPE: &'static str = "application/json";

    fn check_content_type(content_type: &str) -> bool {
        content_type.parse::<mime::Mime>().is_ok_and(|mime| {
            mime.type_() == "application"
                && (mime.subtype() == "json" || mime.suffix().is_some_and(|s| s == "json"))
        })
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Type + DeserializeOwned + Send> ParsePayload for JsonBody<T> {
    const IS_REQUIRED: bool = true;

    async fn from_request(_request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let bytes = body.take()?.into_vec().await?;
        parse(&bytes).map(Self).map_err(poem::Error::from)
    }
}

// What poem-openapi's (private) payload macro writes for its own payloads: check the content
// type, then parse.
impl<'a, T: Type + DeserializeOwned + Send> ApiExtractor<'a> for JsonBody<T> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];

    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        <Self as Payload>::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: None,
            content: vec![MetaMediaType {
                content_type: <Self as Payload>::CONTENT_TYPE,
                schema: <Self as Payload>::schema_ref(),
            }],
            required: true,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        match request.content_type() {
            Some(content_type) if Self::check_content_type(content_type) => {
                <Self as ParsePayload>::from_request(request, body).await
            }
            Some(content_type) => Err(ContentTypeError::NotSupported {
                content_type: content_type.to_owned(),
            }
            .into()),
            None => Err(ContentTypeError::ExpectContentType.into()),
        }
    }
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let invalid =
        |field: String, message: String| Problem::validation(vec![FieldError { field, message }]);
    let Some(first) = bytes.iter().find(|b| !b.is_ascii_whitespace()) else {
        return Err(invalid("body".into(), "a JSON body is required".into()));
    };
    // Every body of the API is an object; serde would also read a struct from an array.
    if *first != b'{' {
        return Err(invalid("body".into(), "must be a JSON object".into()));
    }
    let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        match inner.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                invalid("body".into(), format!("invalid JSON: {inner}"))
            }
            _ => {
                let message = inner.to_string();
                // serde reports a missing field at its parent's path, naming it in the text.
                match missing_field(&message) {
                    Some(field) => invalid(join(&path, field), "field required".into()),
                    None if path == "." => invalid("body".into(), strip_position(&message)),
                    None => invalid(path, strip_position(&message)),
                }
            }
        }
    })
}

fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

fn join(path: &str, field: &str) -> String {
    if path == "." {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

/// serde_json ends its messages with " at line L column C", which says nothing to a client.
fn strip_position(message: &str) -> String {
    message
        .rsplit_once(" at line ")
        .map_or(message, |(text, _)| text)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Login {
        email: String,
        password: String,
    }

    fn fields(bytes: &str) -> Vec<(String, String)> {
        parse::<Login>(bytes.as_bytes())
            .unwrap_err()
            .errors
            .into_iter()
            .map(|e| (e.field, e.message))
            .collect()
    }

    #[test]
    fn a_missing_field_is_named() {
        assert_eq!(
            fields(r#"{"email": "a@b.co"}"#),
            [("password".into(), "field required".into())]
        );
    }

    #[test]
    fn a_field_of_the_wrong_type_is_named() {
        let errors = fields(r#"{"email": 5, "password": "x"}"#);
        assert_eq!(errors[0].0, "email");
        assert!(
            errors[0].1.starts_with("invalid type: integer `5`"),
            "{}",
            errors[0].1
        );
    }

    #[test]
    fn malformed_and_empty_bodies_blame_the_body() {
        for body in ["{", "", "   ", "not json", r#"["a"]"#, "null"] {
            let errors = fields(body);
            assert_eq!(errors[0].0, "body", "{body:?}");
        }
    }
}
