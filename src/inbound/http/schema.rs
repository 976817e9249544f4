//! Request bodies whose OpenAPI schema must say more than a derived `Object` can: a body that
//! takes exactly one of two fields, and the browser's WebAuthn answer. Generated clients and
//! fuzzers read the document, so it must refuse what the handlers refuse, no more and no less.

use std::borrow::Cow;

use poem_openapi::registry::{MetaSchema, MetaSchemaRef, Registry};
use poem_openapi::types::Type;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::domain::mfa::PASSKEY_NAME_MAX_CHARS;

/// No control characters, as every text field of the API (ECMA-262, as JSON Schema reads it).
pub const NO_CONTROLS: &str = r"^[^\u0000-\u001F\u007F-\u009F]*$";

/// A body `T` that must carry exactly one of the two optional fields `T::CHOICES`: documented
/// as `T`'s object with a `oneOf` of the two, and parsed as `T` (the handler says which one
/// was missing or doubled).
pub struct ExactlyOne<T>(pub T);

/// The two fields of which a body takes exactly one.
pub trait OneOfTwo: Type {
    const CHOICES: [&'static str; 2];
}

impl<T: OneOfTwo> Type for ExactlyOne<T> {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        format!("{}_exactly_one", T::name()).into()
    }

    fn schema_ref() -> MetaSchemaRef {
        let requiring = |field| {
            MetaSchemaRef::Inline(Box::new(MetaSchema {
                required: vec![field],
                ..MetaSchema::new("object")
            }))
        };
        MetaSchemaRef::Inline(Box::new(MetaSchema {
            all_of: vec![T::schema_ref()],
            one_of: T::CHOICES.into_iter().map(requiring).collect(),
            ..MetaSchema::new("object")
        }))
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ExactlyOne<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Self)
    }
}

/// Which WebAuthn ceremony an answer finishes.
pub trait Ceremony: Send + Sync {
    /// The schema's name.
    const NAME: &'static str;
    /// The members of the answer's `response` this ceremony needs.
    const RESPONSE: &'static [&'static str];
    /// Whether the answer may carry the passkey's `name`.
    const NAMED: bool;
}

/// Finishes adding a passkey: the authenticator's attestation.
pub struct Registration;

impl Ceremony for Registration {
    const NAME: &'static str = "PasskeyRegistrationAnswer";
    const RESPONSE: &'static [&'static str] = &["clientDataJSON", "attestationObject"];
    const NAMED: bool = true;
}

/// Finishes a sign-in: an assertion, naming its (discoverable) user.
pub struct Authentication;

impl Ceremony for Authentication {
    const NAME: &'static str = "PasskeySignInAnswer";
    const RESPONSE: &'static [&'static str] = &[
        "clientDataJSON",
        "authenticatorData",
        "signature",
        "userHandle",
    ];
    const NAMED: bool = false;
}

/// The browser's `PublicKeyCredential` (its `toJSON()`), with an optional `name` beside it, or
/// wrapped as `{"credential": ..., "name": ...}`; the WebAuthn adapter reads it.
pub struct PasskeyAnswer<C> {
    pub json: Value,
    ceremony: std::marker::PhantomData<C>,
}

fn string() -> MetaSchemaRef {
    MetaSchemaRef::Inline(Box::new(MetaSchema::new("string")))
}

/// A passkey's name where an answer carries it: `null`, empty or blank, the service picks one.
fn name() -> MetaSchemaRef {
    MetaSchemaRef::Inline(Box::new(MetaSchema {
        max_length: Some(PASSKEY_NAME_MAX_CHARS),
        pattern: Some(NO_CONTROLS.to_owned()),
        nullable: true,
        ..MetaSchema::new("string")
    }))
}

impl<C: Ceremony> PasskeyAnswer<C> {
    /// The `PublicKeyCredential` itself.
    fn credential() -> MetaSchema {
        let response = MetaSchema {
            required: C::RESPONSE.to_vec(),
            properties: C::RESPONSE
                .iter()
                .map(|member| (*member, string()))
                .collect(),
            ..MetaSchema::new("object")
        };
        let kind = MetaSchema {
            enum_items: vec![Value::from("public-key")],
            ..MetaSchema::new("string")
        };
        MetaSchema {
            description: Some("The browser's PublicKeyCredential, as its toJSON() gives it."),
            required: vec!["id", "rawId", "type", "response"],
            properties: vec![
                ("id", string()),
                ("rawId", string()),
                ("type", MetaSchemaRef::Inline(Box::new(kind))),
                ("response", MetaSchemaRef::Inline(Box::new(response))),
            ],
            ..MetaSchema::new("object")
        }
    }
}

impl<C: Ceremony> Type for PasskeyAnswer<C> {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        C::NAME.into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Reference(C::NAME.to_owned())
    }

    fn register(registry: &mut Registry) {
        registry.create_schema::<Self, _>(C::NAME.to_owned(), |_| {
            let mut direct = Self::credential();
            let mut wrapped = MetaSchema {
                required: vec!["credential"],
                properties: vec![(
                    "credential",
                    MetaSchemaRef::Inline(Box::new(Self::credential())),
                )],
                ..MetaSchema::new("object")
            };
            if C::NAMED {
                direct.properties.push(("name", name()));
                wrapped.properties.push(("name", name()));
            }
            MetaSchema {
                one_of: vec![
                    MetaSchemaRef::Inline(Box::new(direct)),
                    MetaSchemaRef::Inline(Box::new(wrapped)),
                ],
                ..MetaSchema::new("object")
            }
        });
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl<'de, C> Deserialize<'de> for PasskeyAnswer<C> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Value::deserialize(deserializer).map(|json| Self {
            json,
            ceremony: std::marker::PhantomData,
        })
    }
}
