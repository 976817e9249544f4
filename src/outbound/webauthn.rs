//! Passkeys on webauthn-rs (pure Rust since 0.6): the adapter of the `PasskeyCeremonies` port.
//! Options, states, answers and credentials cross the port as JSON text, so the core knows
//! none of webauthn-rs's types, and a state stored by one instance finishes on another.
//!
//! webauthn-rs's passkeys always require user verification (the state enforces the UV flag),
//! and their options say so (`userVerification: "required"`): an authenticator without UV is
//! turned away by the browser, not at the finish.

use std::fmt::Display;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use uuid::Uuid;
use webauthn_rs::prelude::{
    DiscoverableAuthentication, Passkey, PasskeyRegistration, PublicKeyCredential,
    RegisterPublicKeyCredential, Url, WebauthnError,
};
use webauthn_rs::{Webauthn, WebauthnBuilder};

use crate::domain::BackendError;
use crate::domain::ports::{
    CeremonyError, CeremonyStart, PasskeyCeremonies, RegisteredPasskey, VerifiedAssertion,
};

/// How long the browser is told to wait: the core keeps a ceremony's state as long
/// (`MfaPolicy::ceremony_ttl`).
const CEREMONY_TIMEOUT: Duration = Duration::from_secs(300);

/// base64url with or without padding, as webauthn-rs reads the rest of an answer.
const BASE64URL_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The WebAuthn relying party of this service, on webauthn-rs.
pub struct WebauthnCeremonies {
    webauthn: Webauthn,
}

impl WebauthnCeremonies {
    /// The relying party of `public_url`: its host is the RP id, its origin
    /// (scheme://host\[:port\], the port matching exactly) the only origin accepted; any path is
    /// ignored. `rp_name` is what authenticators show.
    ///
    /// # Errors
    /// When `public_url` is not a URL, or its host is not a domain name: browsers refuse an IP
    /// address as RP id (`http://localhost:PORT` is fine).
    pub fn new(public_url: &str, rp_name: &str) -> Result<Self, String> {
        let url = Url::parse(public_url).map_err(|e| format!("public URL {public_url:?}: {e}"))?;
        let rp_id = url.domain().ok_or_else(|| {
            format!(
                "public URL {public_url:?}: a WebAuthn relying party needs a domain name \
                 (localhost will do), not an IP address"
            )
        })?;
        let origin = Url::parse(&url.origin().ascii_serialization())
            .map_err(|e| format!("public URL {public_url:?} has no origin: {e}"))?;
        let webauthn = WebauthnBuilder::new(rp_id, &origin)
            .and_then(|builder| builder.rp_name(rp_name).timeout(CEREMONY_TIMEOUT).build())
            .map_err(|e| format!("WebAuthn relying party {rp_id:?} at {origin}: {e}"))?;
        Ok(Self { webauthn })
    }
}

/// The answer is at fault.
fn rejected(what: &str, err: impl Display) -> CeremonyError {
    CeremonyError::Rejected(format!("{what}: {err}"))
}

/// This side is at fault: webauthn-rs, or what was stored.
fn unexpected(what: &str, err: impl Display) -> CeremonyError {
    CeremonyError::Backend(BackendError::unexpected(format!("{what}: {err}")))
}

/// webauthn-rs refused the answer (signature, origin, challenge, flags, counter...).
fn unverified(err: WebauthnError) -> CeremonyError {
    rejected("passkey verification failed", err)
}

fn to_value(what: &str, value: &impl Serialize) -> Result<Value, CeremonyError> {
    serde_json::to_value(value).map_err(|e| unexpected(what, e))
}

fn to_text(what: &str, value: &impl Serialize) -> Result<String, CeremonyError> {
    serde_json::to_string(value).map_err(|e| unexpected(what, e))
}

/// Reads what this adapter gave the core to store.
fn stored<T: DeserializeOwned>(what: &str, text: &str) -> Result<T, CeremonyError> {
    serde_json::from_str(text).map_err(|e| unexpected(what, e))
}

/// Reads the browser's answer.
fn answer<T: DeserializeOwned>(text: &str) -> Result<T, CeremonyError> {
    serde_json::from_str(text).map_err(|e| rejected("malformed passkey answer", e))
}

/// The start of a ceremony from its options (as JSON, adjusted) and its state.
fn ceremony_start(options: &Value, state: &impl Serialize) -> Result<CeremonyStart, CeremonyError> {
    let challenge = options["publicKey"]["challenge"]
        .as_str()
        .ok_or_else(|| unexpected("WebAuthn options", "no publicKey.challenge"))?
        .to_owned();
    Ok(CeremonyStart {
        options: to_text("WebAuthn options", options)?,
        challenge,
        state: to_text("ceremony state", state)?,
    })
}

/// Decodes base64url (padded or not) from an answer.
fn decode(what: &str, text: &str) -> Result<Vec<u8>, CeremonyError> {
    BASE64URL_ANY_PADDING
        .decode(text)
        .map_err(|e| rejected(what, e))
}

impl PasskeyCeremonies for WebauthnCeremonies {
    fn start_registration(
        &self,
        user_handle: Uuid,
        user_name: &str,
        display_name: &str,
        existing: &[Vec<u8>],
    ) -> Result<CeremonyStart, CeremonyError> {
        let exclude = (!existing.is_empty()).then(|| existing.to_vec());
        let (options, state) = self
            .webauthn
            .start_passkey_registration(user_handle, user_name, display_name, exclude)
            .map_err(|e| unexpected("starting a passkey registration", e))?;
        let mut options = to_value("WebAuthn options", &options)?;
        // webauthn-rs discourages resident keys for passkeys, but a sign-in that names no user
        // needs one. Its state neither records nor checks this choice: only the options change.
        let selection = &mut options["publicKey"]["authenticatorSelection"];
        selection["residentKey"] = "required".into();
        selection["requireResidentKey"] = true.into();
        ceremony_start(&options, &state)
    }

    fn finish_registration(
        &self,
        state: &str,
        response: &str,
    ) -> Result<RegisteredPasskey, CeremonyError> {
        let state: PasskeyRegistration = stored("registration state", state)?;
        let response: RegisterPublicKeyCredential = answer(response)?;
        let passkey = self
            .webauthn
            .finish_passkey_registration(&response, &state)
            .map_err(unverified)?;
        Ok(RegisteredPasskey {
            credential_id: passkey.cred_id().to_vec(),
            credential: to_text("passkey", &passkey)?,
        })
    }

    fn start_authentication(&self) -> Result<CeremonyStart, CeremonyError> {
        let (options, state) = self
            .webauthn
            .start_discoverable_authentication()
            .map_err(|e| unexpected("starting a passkey sign-in", e))?;
        let mut options = to_value("WebAuthn options", &options)?;
        // webauthn-rs asks for the autofill UI ("mediation": "conditional") beside "publicKey";
        // the port promises plain options, and a page that wants autofill adds it itself.
        if let Some(members) = options.as_object_mut() {
            members.remove("mediation");
        }
        ceremony_start(&options, &state)
    }

    fn challenge_of(&self, response: &str) -> Result<String, CeremonyError> {
        let response: Value = answer(response)?;
        let client_data = response["response"]["clientDataJSON"]
            .as_str()
            .ok_or_else(|| rejected("passkey answer", "no response.clientDataJSON"))?;
        let client_data: Value =
            serde_json::from_slice(&decode("passkey answer: clientDataJSON", client_data)?)
                .map_err(|e| rejected("passkey answer: clientDataJSON", e))?;
        let challenge = client_data["challenge"]
            .as_str()
            .ok_or_else(|| rejected("passkey answer", "clientDataJSON without a challenge"))?;
        // In the form the options carry it, which the core files the state under.
        Ok(URL_SAFE_NO_PAD.encode(decode("passkey answer: challenge", challenge)?))
    }

    fn credential_of(&self, response: &str) -> Result<Vec<u8>, CeremonyError> {
        let response: PublicKeyCredential = answer(response)?;
        // Without a user handle (a UUID) the credential cannot be a discoverable passkey.
        let (_, credential_id) = self
            .webauthn
            .identify_discoverable_authentication(&response)
            .map_err(|e| rejected("passkey answer without a valid user handle", e))?;
        Ok(credential_id.to_vec())
    }

    fn finish_authentication(
        &self,
        state: &str,
        response: &str,
        user_handle: Uuid,
        credential: &str,
    ) -> Result<VerifiedAssertion, CeremonyError> {
        let state: DiscoverableAuthentication = stored("sign-in state", state)?;
        let response: PublicKeyCredential = answer(response)?;
        // webauthn-rs checks the assertion against the credential it is given, not that the
        // user the answer names owns it (WebAuthn's step "verify that response.userHandle
        // identifies the owner"): that is checked here.
        if response.get_user_unique_id() != Some(user_handle.as_bytes().as_slice()) {
            return Err(rejected(
                "passkey answer",
                "the user handle is not the credential owner's",
            ));
        }
        let mut passkey: Passkey = stored("stored passkey", credential)?;
        let result = self
            .webauthn
            .finish_discoverable_authentication_v2(&response, state, &passkey)
            .map_err(unverified)?;
        let updated_credential = match passkey.update_credential(&result) {
            Some(true) => Some(to_text("passkey", &passkey)?),
            _ => None,
        };
        Ok(VerifiedAssertion {
            credential_id: result.cred_id().to_vec(),
            updated_credential,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::properties::config;

    const ORIGIN: &str = "http://localhost:8000";

    fn ceremonies() -> WebauthnCeremonies {
        WebauthnCeremonies::new(ORIGIN, "Portcullis").unwrap()
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// An answer of the right shape for `challenge`, from this origin or another, with the
    /// authenticator's binary parts (CBOR, authenticator data, signature) made up.
    fn answer(
        kind: &str,
        challenge: &str,
        origin: &str,
        binary: &[Vec<u8>; 3],
        user_handle: Option<Uuid>,
    ) -> String {
        let client_data = json!({"type": kind, "challenge": challenge, "origin": origin});
        let id = b64(&binary[2][..binary[2].len().min(16)]);
        json!({
            "id": id,
            "rawId": id,
            "type": "public-key",
            "response": {
                "clientDataJSON": b64(client_data.to_string().as_bytes()),
                "attestationObject": b64(&binary[0]),
                "authenticatorData": b64(&binary[1]),
                "signature": b64(&binary[2]),
                "userHandle": user_handle.map(|u| b64(u.as_bytes())),
            },
            "extensions": {},
        })
        .to_string()
    }

    fn binary() -> impl Strategy<Value = [Vec<u8>; 3]> {
        let part = || prop::collection::vec(any::<u8>(), 0..120);
        (part(), part(), part()).prop_map(|(a, b, c)| [a, b, c])
    }

    proptest! {
        #![proptest_config(config(128))]

        /// Any text as a browser's answer: the challenge and credential are read from it or it
        /// is refused as the answer's fault, never a panic and never an error of ours.
        #[test]
        fn any_answer_is_read_or_refused(
            text in prop_oneof![
                any::<String>(),
                "\\{\"response\": \\{\"clientDataJSON\": \"[A-Za-z0-9_=-]{0,40}\"\\}\\}",
            ],
            challenge in "[A-Za-z0-9_-]{0,43}",
            binary in binary(),
            user in prop::option::of(any::<u128>()),
        ) {
            let ceremonies = ceremonies();
            let shaped = answer("webauthn.get", &challenge, ORIGIN, &binary, user.map(Uuid::from_u128));
            for text in [text, shaped] {
                for result in [
                    ceremonies.challenge_of(&text).map(drop),
                    ceremonies.credential_of(&text).map(drop),
                ] {
                    prop_assert!(matches!(result, Ok(()) | Err(CeremonyError::Rejected(_))));
                }
            }
            let read = ceremonies.challenge_of(&answer("webauthn.get", &challenge, ORIGIN, &binary, None));
            prop_assert_eq!(
                read.ok(),
                BASE64URL_ANY_PADDING.decode(&challenge).ok().map(|bytes| b64(&bytes))
            );
        }

        /// Answers to a real ceremony, with the right challenge and origin (or another origin)
        /// and made-up authenticator data, reach webauthn-rs's parsers and are refused there.
        #[test]
        fn a_made_up_answer_to_a_real_ceremony_is_refused(
            binary in binary(),
            origin in prop_oneof![Just(ORIGIN.to_owned()), "https?://[a-z.]{1,12}(:[0-9]{1,5})?"],
            kind in "webauthn\\.(create|get)",
            user in any::<u128>(),
        ) {
            let ceremonies = ceremonies();
            let user = Uuid::from_u128(user);
            let registration = ceremonies.start_registration(user, "ann@example.com", "Ann", &[]).unwrap();
            let response = answer(&kind, &registration.challenge, &origin, &binary, None);
            prop_assert!(matches!(
                ceremonies.finish_registration(&registration.state, &response),
                Err(CeremonyError::Rejected(_))
            ));
            let sign_in = ceremonies.start_authentication().unwrap();
            let response = answer(&kind, &sign_in.challenge, &origin, &binary, Some(user));
            prop_assert_eq!(ceremonies.challenge_of(&response).unwrap(), sign_in.challenge);
            // No stored passkey can match made-up data; an empty one stands in.
            let stored = "{}";
            let outcome = ceremonies.finish_authentication(&sign_in.state, &response, user, stored);
            prop_assert!(outcome.is_err());
            let other = Uuid::from_u128(!user.as_u128());
            let refused = ceremonies.finish_authentication(&sign_in.state, &response, other, stored);
            prop_assert!(matches!(refused, Err(CeremonyError::Rejected(_))));
        }
    }
}
