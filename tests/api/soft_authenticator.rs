//! A software passkey authenticator and browser: it answers the options a relying party gives
//! `navigator.credentials.create/get` with what a browser's `PublicKeyCredential.toJSON()`
//! gives (base64url fields, toJSON's extra members included), as a platform authenticator with
//! user verification would: ES256 (P-256) keys, "none" attestation, resident keys.
//!
//! Written from the WebAuthn Level 3 spec, not from webauthn-rs, so that it checks the server
//! independently. Crypto from `ring`; the little CBOR it needs is encoded by hand.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom as _, SystemRandom};
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde_json::{Value, json};

/// One credential the authenticator holds.
pub struct SoftCredential {
    pub id: Vec<u8>,
    rp_id: String,
    user_handle: Vec<u8>,
    pkcs8: Vec<u8>,
    pub sign_count: u32,
}

pub struct SoftAuthenticator {
    pub credentials: Vec<SoftCredential>,
    /// Whether the signature counter goes up at each assertion (hardware keys, Chromium's
    /// virtual authenticator) or stays 0 (synced passkeys).
    pub use_counter: bool,
    /// Whether the authenticator claims to have verified the user (PIN, biometrics).
    pub user_verified: bool,
    /// The id of the next credential, as a broken or hostile authenticator would choose it:
    /// one that exists already, whatever `excludeCredentials` says.
    pub next_id: Option<Vec<u8>>,
    rng: SystemRandom,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(text: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|e| format!("base64url {text:?}: {e}"))
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    digest(&SHA256, bytes)
        .as_ref()
        .try_into()
        .expect("32 bytes")
}

/// The options' `publicKey` member (or the options themselves when not wrapped).
fn public_key_options(options: &str) -> Result<Value, String> {
    let options: Value = serde_json::from_str(options).map_err(|e| format!("options: {e}"))?;
    Ok(match options.get("publicKey") {
        Some(inner) => inner.clone(),
        None => options,
    })
}

fn host_of(origin: &str) -> Result<String, String> {
    let rest = origin
        .split_once("://")
        .ok_or_else(|| format!("origin {origin:?}"))?
        .1;
    let host = rest.split('/').next().unwrap_or(rest);
    Ok(host.rsplit_once(':').map_or(host, |(h, _)| h).to_owned())
}

/// The RP id of the options (`member` of them), or the origin's host; refused, as a browser
/// refuses it, unless it is the origin's host or a parent domain of it.
fn rp_id(options: &Value, member: &str, origin: &str) -> Result<String, String> {
    let host = host_of(origin)?;
    let rp_id = options[member].as_str().map_or(host.clone(), str::to_owned);
    if host == rp_id || host.ends_with(&format!(".{rp_id}")) {
        Ok(rp_id)
    } else {
        Err(format!(
            "SecurityError: RP id {rp_id:?} is not valid for origin {origin:?}"
        ))
    }
}

// Minimal CBOR (RFC 8949): what a "none" attestation and an ES256 COSE key need.

fn cbor_head(out: &mut Vec<u8>, major: u8, value: usize) {
    let major = major << 5;
    match u8::try_from(value) {
        Ok(small @ 0..=23) => out.push(major | small),
        Ok(byte) => out.extend([major | 24, byte]),
        Err(_) => {
            out.push(major | 25);
            out.extend(u16::try_from(value).expect("short CBOR item").to_be_bytes());
        }
    }
}

fn cbor_int(out: &mut Vec<u8>, value: i8) {
    match usize::try_from(value) {
        Ok(positive) => cbor_head(out, 0, positive),
        Err(_) => cbor_head(out, 1, usize::from(value.unsigned_abs() - 1)),
    }
}

fn cbor_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    cbor_head(out, 2, bytes.len());
    out.extend_from_slice(bytes);
}

fn cbor_text(out: &mut Vec<u8>, text: &str) {
    cbor_head(out, 3, text.len());
    out.extend_from_slice(text.as_bytes());
}

/// The COSE_Key of a P-256 public key (65-byte uncompressed point) for ES256.
fn cose_es256(point: &[u8]) -> Vec<u8> {
    assert_eq!(point.len(), 65);
    assert_eq!(point[0], 4);
    let mut out = Vec::new();
    cbor_head(&mut out, 5, 5);
    // kty: EC2, alg: ES256, crv: P-256
    for (label, value) in [(1, 2), (3, -7), (-1, 1)] {
        cbor_int(&mut out, label);
        cbor_int(&mut out, value);
    }
    cbor_int(&mut out, -2); // x
    cbor_bytes(&mut out, &point[1..33]);
    cbor_int(&mut out, -3); // y
    cbor_bytes(&mut out, &point[33..65]);
    out
}

/// The SubjectPublicKeyInfo DER of a P-256 point, as toJSON()'s response.publicKey gives it.
fn spki_p256(point: &[u8]) -> Vec<u8> {
    const PREFIX: [u8; 26] = [
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    [PREFIX.as_slice(), point].concat()
}

const FLAG_UP: u8 = 0x01;
const FLAG_UV: u8 = 0x04;
const FLAG_AT: u8 = 0x40;

impl SoftAuthenticator {
    pub fn new() -> Self {
        Self {
            credentials: Vec::new(),
            use_counter: true,
            user_verified: true,
            next_id: None,
            rng: SystemRandom::new(),
        }
    }

    fn flags(&self) -> u8 {
        FLAG_UP | if self.user_verified { FLAG_UV } else { 0 }
    }

    fn client_data(kind: &str, challenge: &str, origin: &str) -> Vec<u8> {
        // Field order as browsers write it; the challenge is echoed exactly as given.
        serde_json::to_vec(&json!({
            "type": kind,
            "challenge": challenge,
            "origin": origin,
            "crossOrigin": false,
        }))
        .expect("client data")
    }

    /// `navigator.credentials.create({publicKey})` at `origin` (e.g. "http://localhost:8080"):
    /// the new credential as `PublicKeyCredential.toJSON()` gives it.
    pub fn create(&mut self, options: &str, origin: &str) -> Result<Value, String> {
        let options = public_key_options(options)?;
        let rp_id = rp_id(&options["rp"], "id", origin)?;
        let challenge = options["challenge"]
            .as_str()
            .ok_or("options: no challenge")?;
        let user_handle = unb64(
            options["user"]["id"]
                .as_str()
                .ok_or("options: no user.id")?,
        )?;
        let es256 = options["pubKeyCredParams"]
            .as_array()
            .ok_or("options: no pubKeyCredParams")?
            .iter()
            .any(|p| p["alg"] == -7 && p["type"] == "public-key");
        if !es256 {
            return Err("NotSupportedError: ES256 not offered".into());
        }
        let id = match self.next_id.take() {
            Some(id) => id,
            None => {
                self.check_excluded(&options, &rp_id)?;
                let mut id = vec![0u8; 16];
                self.rng.fill(&mut id).map_err(|_| "random")?;
                id
            }
        };

        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &self.rng)
            .map_err(|_| "key generation")?
            .as_ref()
            .to_vec();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8, &self.rng)
            .map_err(|e| format!("key: {e}"))?;
        let point = key.public_key().as_ref().to_vec();

        let client_data = Self::client_data("webauthn.create", challenge, origin);
        let mut auth_data = sha256(rp_id.as_bytes()).to_vec();
        auth_data.push(self.flags() | FLAG_AT);
        auth_data.extend(0u32.to_be_bytes()); // signCount
        auth_data.extend([0u8; 16]); // AAGUID: none
        auth_data.extend(u16::try_from(id.len()).expect("short id").to_be_bytes());
        auth_data.extend(&id);
        auth_data.extend(cose_es256(&point));

        let mut attestation = Vec::new();
        cbor_head(&mut attestation, 5, 3);
        cbor_text(&mut attestation, "fmt");
        cbor_text(&mut attestation, "none");
        cbor_text(&mut attestation, "attStmt");
        cbor_head(&mut attestation, 5, 0);
        cbor_text(&mut attestation, "authData");
        cbor_bytes(&mut attestation, &auth_data);

        // A resident credential replaces an older one of the same RP and user.
        self.credentials
            .retain(|c| !(c.rp_id == rp_id && c.user_handle == user_handle));
        self.credentials.push(SoftCredential {
            id: id.clone(),
            rp_id,
            user_handle,
            pkcs8,
            sign_count: 0,
        });

        Ok(json!({
            "id": b64(&id),
            "rawId": b64(&id),
            "type": "public-key",
            "authenticatorAttachment": "platform",
            "response": {
                "clientDataJSON": b64(&client_data),
                "attestationObject": b64(&attestation),
                "authenticatorData": b64(&auth_data),
                "transports": ["internal"],
                "publicKey": b64(&spki_p256(&point)),
                "publicKeyAlgorithm": -7,
            },
            "clientExtensionResults": { "credProps": { "rk": true } },
        }))
    }

    /// Refuses, as an authenticator must, to make a second credential for an RP where it
    /// holds one of the `excludeCredentials` already.
    fn check_excluded(&self, options: &Value, rp_id: &str) -> Result<(), String> {
        for descriptor in options["excludeCredentials"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let id = unb64(
                descriptor["id"]
                    .as_str()
                    .ok_or("excludeCredentials: no id")?,
            )?;
            if self
                .credentials
                .iter()
                .any(|c| c.id == id && c.rp_id == rp_id)
            {
                return Err("InvalidStateError: credential excluded".into());
            }
        }
        Ok(())
    }

    /// `navigator.credentials.get({publicKey})` at `origin`: the assertion as toJSON() gives
    /// it. With an empty allowCredentials (a discoverable sign-in), the newest credential of the
    /// RP answers.
    pub fn get(&mut self, options: &str, origin: &str) -> Result<Value, String> {
        let options = public_key_options(options)?;
        let rp_id = rp_id(&options, "rpId", origin)?;
        let challenge = options["challenge"]
            .as_str()
            .ok_or("options: no challenge")?;
        let allowed = options["allowCredentials"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| unb64(d["id"].as_str().unwrap_or_default()))
            .collect::<Result<Vec<_>, _>>()?;
        let use_counter = self.use_counter;
        let flags = self.flags();
        let credential = self
            .credentials
            .iter_mut()
            .rev()
            .filter(|c| c.rp_id == rp_id)
            .find(|c| allowed.is_empty() || allowed.contains(&c.id))
            .ok_or("NotAllowedError: no credential for this RP")?;
        if use_counter {
            credential.sign_count += 1;
        }

        let client_data = Self::client_data("webauthn.get", challenge, origin);
        let mut auth_data = sha256(rp_id.as_bytes()).to_vec();
        auth_data.push(flags);
        auth_data.extend(credential.sign_count.to_be_bytes());
        let signed = [auth_data.as_slice(), &sha256(&client_data)].concat();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            &credential.pkcs8,
            &self.rng,
        )
        .map_err(|e| format!("key: {e}"))?;
        let signature = key.sign(&self.rng, &signed).map_err(|_| "signing")?;

        Ok(json!({
            "id": b64(&credential.id),
            "rawId": b64(&credential.id),
            "type": "public-key",
            "authenticatorAttachment": "platform",
            "response": {
                "clientDataJSON": b64(&client_data),
                "authenticatorData": b64(&auth_data),
                "signature": b64(signature.as_ref()),
                "userHandle": b64(&credential.user_handle),
            },
            "clientExtensionResults": {},
        }))
    }
}

/// Decodes the answer's `response.<field>`, lets `change` alter it, and encodes it back.
pub fn tamper(answer: &Value, field: &str, change: impl FnOnce(&mut Vec<u8>)) -> Value {
    let mut answer = answer.clone();
    let mut bytes = unb64(
        answer["response"][field]
            .as_str()
            .expect("a base64url field"),
    )
    .expect("base64url");
    change(&mut bytes);
    answer["response"][field] = b64(&bytes).into();
    answer
}
