//! The WebAuthn adapter against the software authenticator: the ceremonies' options, round
//! trips across two instances, and the answers it must refuse (and how: the caller's fault or
//! its own).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use portcullis::domain::ports::{CeremonyError, CeremonyStart, PasskeyCeremonies};
use portcullis::outbound::webauthn::WebauthnCeremonies;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::soft_authenticator::{SoftAuthenticator, tamper};

const ORIGIN: &str = "http://localhost:8080";
const HANDLE: Uuid = Uuid::from_bytes(*b"0123456789abcdef");

fn service() -> WebauthnCeremonies {
    WebauthnCeremonies::new("http://localhost:8080/", "Portcullis").unwrap()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

/// The reason of a refusal that is the caller's fault.
#[track_caller]
fn assert_rejected<T>(result: Result<T, CeremonyError>) -> String {
    match result {
        Err(CeremonyError::Rejected(reason)) => reason,
        Err(CeremonyError::Backend(err)) => panic!("Backend, not Rejected: {err:?}"),
        Ok(_) => panic!("accepted"),
    }
}

#[track_caller]
fn assert_backend<T>(result: Result<T, CeremonyError>) {
    assert!(matches!(result, Err(CeremonyError::Backend(_))));
}

/// A registration for HANDLE.
fn start_registration(service: &WebauthnCeremonies) -> CeremonyStart {
    service
        .start_registration(HANDLE, "alice@example.com", "Alice", &[])
        .unwrap()
}

/// A registration's start, and the authenticator's answer to it from `origin`.
fn registration_answer(
    service: &WebauthnCeremonies,
    authenticator: &mut SoftAuthenticator,
    origin: &str,
) -> (CeremonyStart, String) {
    let start = start_registration(service);
    let answer = authenticator.create(&start.options, origin).unwrap();
    (start, answer.to_string())
}

/// Registers a passkey for HANDLE: the stored credential.
fn register(service: &WebauthnCeremonies, authenticator: &mut SoftAuthenticator) -> String {
    let (start, answer) = registration_answer(service, authenticator, ORIGIN);
    assert_eq!(service.challenge_of(&answer).unwrap(), start.challenge);
    service
        .finish_registration(&start.state, &answer)
        .unwrap()
        .credential
}

/// A sign-in's state and the authenticator's answer to it, from `origin`.
fn sign_in_answer(
    service: &WebauthnCeremonies,
    authenticator: &mut SoftAuthenticator,
    origin: &str,
) -> (String, Value) {
    let start = service.start_authentication().unwrap();
    let answer = authenticator.get(&start.options, origin).unwrap();
    (start.state, answer)
}

#[test]
fn registration_options_ask_for_a_verified_resident_key_and_exclude_the_existing_ones() {
    let start = service()
        .start_registration(HANDLE, "alice@example.com", "Alice", &[vec![1, 2, 3]])
        .unwrap();
    let options = json(&start.options);
    let public_key = &options["publicKey"];
    assert_eq!(
        public_key["rp"],
        json!({"id": "localhost", "name": "Portcullis"})
    );
    assert_eq!(public_key["user"]["id"], URL_SAFE_NO_PAD.encode(HANDLE));
    assert_eq!(public_key["user"]["name"], "alice@example.com");
    assert_eq!(public_key["user"]["displayName"], "Alice");
    assert_eq!(public_key["challenge"], start.challenge.as_str());
    assert!(!start.challenge.contains('='));
    assert_eq!(public_key["timeout"], 300_000);
    let selection = &public_key["authenticatorSelection"];
    assert_eq!(selection["residentKey"], "required");
    assert_eq!(selection["requireResidentKey"], true);
    assert_eq!(selection["userVerification"], "required");
    assert_eq!(public_key["excludeCredentials"][0]["id"], "AQID");
}

#[test]
fn a_passkey_registered_and_used_on_two_instances_signs_in_and_its_counter_only_goes_up() {
    let (server_a, server_b) = (service(), service());
    let mut authenticator = SoftAuthenticator::new();
    let (start, answer) = registration_answer(&server_a, &mut authenticator, ORIGIN);
    // Another instance finishes what the first one started, from the stored state alone.
    assert_eq!(server_b.challenge_of(&answer).unwrap(), start.challenge);
    let registered = server_b.finish_registration(&start.state, &answer).unwrap();
    assert_eq!(registered.credential_id, authenticator.credentials[0].id);

    let start = server_a.start_authentication().unwrap();
    let options = json(&start.options);
    assert_eq!(options.as_object().unwrap().len(), 1, "publicKey alone");
    assert_eq!(options["publicKey"]["rpId"], "localhost");
    assert_eq!(options["publicKey"]["allowCredentials"], json!([]));
    assert_eq!(options["publicKey"]["userVerification"], "required");
    assert_eq!(options["publicKey"]["challenge"], start.challenge.as_str());

    let answer = authenticator
        .get(&start.options, ORIGIN)
        .unwrap()
        .to_string();
    assert_eq!(server_b.challenge_of(&answer).unwrap(), start.challenge);
    assert_eq!(
        server_b.credential_of(&answer).unwrap(),
        registered.credential_id
    );
    let verified = server_b
        .finish_authentication(&start.state, &answer, HANDLE, &registered.credential)
        .unwrap();
    assert_eq!(verified.credential_id, registered.credential_id);
    let updated = verified
        .updated_credential
        .expect("the counter went from 0 to 1");

    // The next sign-in, against the updated credential.
    let (state, answer) = sign_in_answer(&server_b, &mut authenticator, ORIGIN);
    let verified = server_a
        .finish_authentication(&state, &answer.to_string(), HANDLE, &updated)
        .unwrap();
    assert!(verified.updated_credential.is_some());

    // A clone of the key (its counter behind the stored one) is refused.
    authenticator.credentials[0].sign_count = 0;
    let (state, answer) = sign_in_answer(&server_a, &mut authenticator, ORIGIN);
    assert_rejected(server_a.finish_authentication(&state, &answer.to_string(), HANDLE, &updated));
}

#[test]
fn a_synced_passkey_without_a_counter_needs_no_update() {
    let server = service();
    let mut authenticator = SoftAuthenticator::new();
    authenticator.use_counter = false;
    let credential = register(&server, &mut authenticator);
    for _ in 0..2 {
        let (state, answer) = sign_in_answer(&server, &mut authenticator, ORIGIN);
        let verified = server
            .finish_authentication(&state, &answer.to_string(), HANDLE, &credential)
            .unwrap();
        assert!(verified.updated_credential.is_none());
    }
}

#[test]
fn an_answer_to_another_ceremony_is_rejected() {
    let server = service();
    let mut authenticator = SoftAuthenticator::new();
    let (first, answer) = registration_answer(&server, &mut authenticator, ORIGIN);
    let second = start_registration(&server);
    assert_rejected(server.finish_registration(&second.state, &answer));
    let credential = server
        .finish_registration(&first.state, &answer)
        .unwrap()
        .credential;

    let (first, answer) = sign_in_answer(&server, &mut authenticator, ORIGIN);
    let answer = answer.to_string();
    let second = server.start_authentication().unwrap();
    assert_rejected(server.finish_authentication(&second.state, &answer, HANDLE, &credential));
    // A sign-in answer is no registration answer.
    let registration = start_registration(&server);
    assert_rejected(server.finish_registration(&registration.state, &answer));
    server
        .finish_authentication(&first, &answer, HANDLE, &credential)
        .unwrap();
}

#[test]
fn a_tampered_assertion_is_rejected() {
    let server = service();
    let mut authenticator = SoftAuthenticator::new();
    let credential = register(&server, &mut authenticator);
    let (state, answer) = sign_in_answer(&server, &mut authenticator, ORIGIN);
    let finish = |answer: &Value| {
        server.finish_authentication(&state, &answer.to_string(), HANDLE, &credential)
    };

    assert_rejected(finish(&tamper(&answer, "signature", |s| {
        *s.last_mut().unwrap() ^= 1;
    })));
    assert_rejected(finish(&tamper(&answer, "signature", |s| {
        *s = vec![0x30, 0x00];
    })));
    // A counter raised by the client: the signature no longer matches.
    assert_rejected(finish(&tamper(&answer, "authenticatorData", |a| {
        a[36] ^= 0x10;
    })));
    let reason = assert_rejected(finish(&tamper(&answer, "userHandle", |u| u[0] ^= 1)));
    assert!(reason.contains("user handle"), "{reason}");
    // Untouched, it passes.
    finish(&answer).unwrap();
}

#[test]
fn an_assertion_by_another_credential_than_the_one_stored_is_rejected() {
    let server = service();
    let mut laptop = SoftAuthenticator::new();
    let mut phone = SoftAuthenticator::new();
    let laptop_credential = register(&server, &mut laptop);
    register(&server, &mut phone);
    let (state, answer) = sign_in_answer(&server, &mut phone, ORIGIN);
    assert_rejected(server.finish_authentication(
        &state,
        &answer.to_string(),
        HANDLE,
        &laptop_credential,
    ));
}

#[test]
fn an_answer_from_another_origin_is_rejected() {
    let server = service();
    let mut authenticator = SoftAuthenticator::new();
    for origin in [
        "http://localhost:8081",
        "https://localhost:8080",
        "http://evil.localhost:8080",
    ] {
        let (start, answer) = registration_answer(&server, &mut authenticator, origin);
        assert_rejected(server.finish_registration(&start.state, &answer));
    }
    let credential = register(&server, &mut authenticator);
    let (state, answer) = sign_in_answer(&server, &mut authenticator, "http://localhost:9999");
    assert_rejected(server.finish_authentication(&state, &answer.to_string(), HANDLE, &credential));
}

#[test]
fn an_authenticator_that_did_not_verify_the_user_is_rejected() {
    let server = service();
    let mut authenticator = SoftAuthenticator::new();
    authenticator.user_verified = false;
    let (start, answer) = registration_answer(&server, &mut authenticator, ORIGIN);
    assert_rejected(server.finish_registration(&start.state, &answer));

    authenticator.user_verified = true;
    let credential = register(&server, &mut authenticator);
    authenticator.user_verified = false;
    let (state, answer) = sign_in_answer(&server, &mut authenticator, ORIGIN);
    assert_rejected(server.finish_authentication(&state, &answer.to_string(), HANDLE, &credential));
}

#[test]
fn malformed_answers_are_rejected_and_padding_or_missing_extras_are_not() {
    let server = service();
    let registration = start_registration(&server);
    let sign_in = server.start_authentication().unwrap();
    for answer in [
        "",
        "not json",
        "{}",
        "[]",
        r#"{"id":"x","rawId":"!!","type":"public-key","response":{}}"#,
        r#"{"response":{"clientDataJSON":"e30"}}"#,
        r#"{"response":{"clientDataJSON":"%%%"}}"#,
    ] {
        assert_rejected(server.finish_registration(&registration.state, answer));
        assert_rejected(server.finish_authentication(&sign_in.state, answer, HANDLE, "{}"));
        assert_rejected(server.credential_of(answer));
        assert_rejected(server.challenge_of(answer));
    }

    let mut authenticator = SoftAuthenticator::new();
    let credential = register(&server, &mut authenticator);
    let answer = authenticator.get(&sign_in.options, ORIGIN).unwrap();
    // Without a user handle, an assertion names no passkey to check it against.
    let mut anonymous = answer.clone();
    anonymous["response"]["userHandle"] = Value::Null;
    assert_rejected(server.credential_of(&anonymous.to_string()));

    let mut relaxed = answer.clone();
    let signature = relaxed["response"]["signature"]
        .as_str()
        .unwrap()
        .to_owned();
    let padding = "=".repeat((4 - signature.len() % 4) % 4);
    relaxed["response"]["signature"] = format!("{signature}{padding}").into();
    let members = relaxed.as_object_mut().unwrap();
    members.remove("clientExtensionResults");
    members.remove("authenticatorAttachment");
    server
        .finish_authentication(&sign_in.state, &relaxed.to_string(), HANDLE, &credential)
        .unwrap();
}

#[test]
fn a_corrupt_stored_state_or_credential_is_the_backends_fault() {
    let server = service();
    let mut authenticator = SoftAuthenticator::new();
    let (start, answer) = registration_answer(&server, &mut authenticator, ORIGIN);
    assert_backend(server.finish_registration("{}", &answer));
    let credential = server
        .finish_registration(&start.state, &answer)
        .unwrap()
        .credential;
    let (state, sign_in) = sign_in_answer(&server, &mut authenticator, ORIGIN);
    let sign_in = sign_in.to_string();
    assert_backend(server.finish_authentication(&state, &sign_in, HANDLE, "{}"));
    // A registration's state is no sign-in's.
    assert_backend(server.finish_authentication(&start.state, &sign_in, HANDLE, &credential));
}

#[test]
fn the_relying_party_is_the_public_urls_domain_and_origin() {
    for url in [
        "http://localhost:8080",
        "http://localhost",
        "https://auth.example.com/portcullis/",
    ] {
        assert!(WebauthnCeremonies::new(url, "P").is_ok(), "{url}");
    }
    for url in ["http://127.0.0.1:8080", "http://[::1]:8080", "not a url"] {
        assert!(WebauthnCeremonies::new(url, "P").is_err(), "{url}");
    }

    // A path in the public URL does not change the origin.
    let server = WebauthnCeremonies::new("https://auth.example.com/portcullis/", "P").unwrap();
    let mut authenticator = SoftAuthenticator::new();
    let (start, answer) =
        registration_answer(&server, &mut authenticator, "https://auth.example.com");
    server.finish_registration(&start.state, &answer).unwrap();
}
