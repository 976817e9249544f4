//! The authorization endpoint's rules: which requests are answered at all, which go back to
//! the client with an error, when a person must sign in or consent, and the codes handed out;
//! and the grants a user holds, with their revocation.

use std::sync::Arc;

use chrono::TimeDelta;

use crate::domain::oauth::{
    AuthorizationCode, ClientId, CodeHash, Consent, GrantView, OAuthClient, Scopes,
    is_s256_challenge,
};
use crate::domain::ports::{ClientRepository, Clock, GrantRepository, SessionRepository};
use crate::domain::secrets::random_secret;
use crate::domain::{
    AuditKind, AuthPolicy, BackendError, ClientInfo, NewAuditEvent, Principal, UserId,
};

/// An authorization request as it arrived: each parameter at most once, as the inbound
/// adapter read it from the query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthorizationRequest {
    pub response_type: Option<String>,
    pub client_id: Option<String>,
    pub redirect_uri: Option<String>,
    pub scope: Option<String>,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub prompt: Option<String>,
    pub max_age: Option<String>,
    pub login_hint: Option<String>,
    /// The name of a parameter sent more than once (RFC 6749 section 3.1 forbids it).
    pub repeated: Option<String>,
}

/// What `prompt` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prompt {
    /// No page at all: an error if one would be needed.
    None,
    /// Sign in again, even when signed in.
    Login,
    /// Ask for consent again, even when given.
    Consent,
    /// Both (`prompt=login consent`).
    LoginAndConsent,
}

impl Prompt {
    /// Reads `prompt`'s space-separated values (OpenID Connect Core section 3.1.2.1): `none`
    /// alone, or `login` and `consent` in any order. `None` for anything else.
    pub fn parse(value: &str) -> Option<Option<Self>> {
        let values: Vec<&str> = value.split(' ').filter(|v| !v.is_empty()).collect();
        let has = |name| values.contains(&name);
        if values
            .iter()
            .any(|v| !matches!(*v, "none" | "login" | "consent"))
        {
            return None;
        }
        Some(match (has("none"), has("login"), has("consent")) {
            (false, false, false) => None,
            (true, false, false) => Some(Self::None),
            (true, _, _) => return None,
            (false, true, false) => Some(Self::Login),
            (false, false, true) => Some(Self::Consent),
            (false, true, true) => Some(Self::LoginAndConsent),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Login => "login",
            Self::Consent => "consent",
            Self::LoginAndConsent => "login consent",
        }
    }

    /// Whether it asks for a fresh sign-in.
    pub fn asks_sign_in(self) -> bool {
        matches!(self, Self::Login | Self::LoginAndConsent)
    }

    /// Whether it asks for the consent page.
    pub fn asks_consent(self) -> bool {
        matches!(self, Self::Consent | Self::LoginAndConsent)
    }

    /// What is left of it once the person has just signed in: the consent it asks for.
    pub fn after_sign_in(self) -> Option<Self> {
        self.asks_consent().then_some(Self::Consent)
    }
}

/// A request that names a registered client and one of its redirect URIs, and passes every
/// other rule: what the sign-in and consent pages carry on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidRequest {
    pub client: OAuthClient,
    /// As the request sent it: the token request must send the same.
    pub redirect_uri: String,
    pub scopes: Scopes,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: String,
    pub prompt: Option<Prompt>,
    pub max_age: Option<TimeDelta>,
    pub login_hint: Option<String>,
}

/// Parameters to send to the client's redirect URI, in the query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRedirect {
    pub redirect_uri: String,
    pub params: Vec<(&'static str, String)>,
}

/// Why an authorization request gets no code.
#[derive(Debug, thiserror::Error)]
pub enum AuthorizeError {
    /// The provider is off (see [`ProviderPolicy::enabled`](super::ProviderPolicy)).
    #[error("OpenID provider needs an asymmetric signing key and a URL issuer")]
    Off,
    /// The client or its redirect URI cannot be trusted: answered with a page, never a
    /// redirect (RFC 6749 section 4.1.2.1).
    #[error("{0}")]
    NotRedirectable(&'static str),
    /// Sent back to the client.
    #[error("{}", .0.params.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "))]
    Redirect(ClientRedirect),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// What happens next with a valid request and whoever is signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nobody is signed in, or the request asks for a fresh sign-in.
    SignIn,
    /// The person must allow these scopes (all the request asks for) on the consent page.
    Consent,
    /// Done: send the browser to the client with a code.
    Redirect(ClientRedirect),
}

/// The authorization endpoint's use cases, and the user's grants.
pub struct Authorizations {
    pub(super) clients: Arc<dyn ClientRepository>,
    pub(super) grants: Arc<dyn GrantRepository>,
    pub(super) sessions: Arc<dyn SessionRepository>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) policy: Arc<AuthPolicy>,
}

/// The longest `state` and `nonce` kept, in bytes: they travel back in URLs and tokens.
const MAX_ECHO_BYTES: usize = 512;

impl Authorizations {
    /// Whether the provider is on.
    pub fn enabled(&self) -> bool {
        self.policy.provider.enabled
    }

    /// Checks a request in the order RFC 6749 and RFC 9700 ask: the client and its redirect
    /// URI first (no redirect to anything else), then the rest, answered at the redirect URI.
    ///
    /// # Errors
    /// [`AuthorizeError::Off`], `NotRedirectable`, `Redirect` (with the error), `Backend`.
    pub async fn check(
        &self,
        request: AuthorizationRequest,
    ) -> Result<ValidRequest, AuthorizeError> {
        if !self.policy.provider.enabled {
            return Err(AuthorizeError::Off);
        }
        if request.repeated.as_deref() == Some("client_id")
            || request.repeated.as_deref() == Some("redirect_uri")
        {
            return Err(AuthorizeError::NotRedirectable(
                "client_id and redirect_uri may be sent only once",
            ));
        }
        let client_id = request
            .client_id
            .as_deref()
            .ok_or(AuthorizeError::NotRedirectable("client_id is missing"))?;
        let client = self
            .clients
            .find_client(&ClientId(client_id.to_owned()))
            .await?
            .ok_or(AuthorizeError::NotRedirectable(
                "This application is not registered",
            ))?;
        let presented = request
            .redirect_uri
            .as_deref()
            .ok_or(AuthorizeError::NotRedirectable("redirect_uri is missing"))?;
        if client.redirect_uri(presented).is_none() {
            return Err(AuthorizeError::NotRedirectable(
                "redirect_uri is not registered for this application",
            ));
        }
        let redirect_uri = presented.to_owned();
        let state = request.state.clone();
        let refuse = |error: &'static str, description: &str| {
            AuthorizeError::Redirect(self.error_redirect(
                &redirect_uri,
                state.as_deref(),
                error,
                description,
            ))
        };
        if let Some(name) = &request.repeated {
            return Err(refuse(
                "invalid_request",
                &format!("{name} was sent more than once"),
            ));
        }
        if request.response_type.as_deref() != Some("code") {
            return Err(refuse(
                "unsupported_response_type",
                "response_type must be code",
            ));
        }
        if !client.allows(crate::domain::oauth::GrantType::AuthorizationCode) {
            return Err(refuse(
                "unauthorized_client",
                "this client may not use the authorization code grant",
            ));
        }
        let Some(code_challenge) = request.code_challenge.clone() else {
            return Err(refuse(
                "invalid_request",
                "code_challenge is required (PKCE)",
            ));
        };
        if request.code_challenge_method.as_deref() != Some("S256") {
            return Err(refuse(
                "invalid_request",
                "code_challenge_method must be S256",
            ));
        }
        if !is_s256_challenge(&code_challenge) {
            return Err(refuse(
                "invalid_request",
                "code_challenge is not an S256 challenge",
            ));
        }
        for (name, value) in [("state", &request.state), ("nonce", &request.nonce)] {
            if value.as_ref().is_some_and(|v| v.len() > MAX_ECHO_BYTES) {
                return Err(refuse("invalid_request", &format!("{name} is too long")));
            }
        }
        let Some(prompt) = Prompt::parse(request.prompt.as_deref().unwrap_or_default()) else {
            return Err(refuse(
                "invalid_request",
                "prompt must be none, or login and consent",
            ));
        };
        let max_age = match request.max_age.as_deref() {
            None => None,
            Some(value) => match value.parse::<u32>() {
                Ok(seconds) => Some(TimeDelta::seconds(i64::from(seconds))),
                Err(_) => {
                    return Err(refuse(
                        "invalid_request",
                        "max_age must be a number of seconds",
                    ));
                }
            },
        };
        let scopes = match Scopes::parse(request.scope.as_deref().unwrap_or_default()) {
            Ok(scopes) if scopes.is_empty() => {
                return Err(refuse("invalid_scope", "scope is required"));
            }
            Ok(scopes) if !client.settings.scopes.covers(&scopes) => {
                return Err(refuse(
                    "invalid_scope",
                    "a requested scope is not allowed for this application",
                ));
            }
            Ok(scopes) => scopes,
            Err(unknown) => {
                return Err(refuse(
                    "invalid_scope",
                    &format!("unknown scope {unknown:?}"),
                ));
            }
        };
        Ok(ValidRequest {
            client,
            redirect_uri,
            scopes,
            state: request.state,
            nonce: request.nonce,
            code_challenge,
            prompt,
            max_age,
            login_hint: request.login_hint,
        })
    }

    /// Decides what a valid request needs, given whoever is signed in to the console; issues
    /// the code when nothing more is needed.
    ///
    /// # Errors
    /// `Redirect` with `login_required` or `consent_required` when `prompt=none` and a page
    /// would be needed; `Backend`.
    pub async fn decide(
        &self,
        request: &ValidRequest,
        signed_in: Option<&Principal>,
    ) -> Result<Decision, AuthorizeError> {
        let Some(principal) = signed_in else {
            return self.page_or_error(request, Decision::SignIn);
        };
        let Some(session_id) = principal.session_id else {
            return self.page_or_error(request, Decision::SignIn);
        };
        let Some((session, _)) = self.sessions.find_session(session_id).await? else {
            return self.page_or_error(request, Decision::SignIn);
        };
        let now = self.clock.now();
        let too_old = request
            .max_age
            .is_some_and(|max_age| session.created_at + max_age < now);
        if request.prompt.is_some_and(Prompt::asks_sign_in) || too_old {
            return self.page_or_error(request, Decision::SignIn);
        }
        let consent = self
            .grants
            .find_consent(principal.user.id, &request.client.id)
            .await?;
        let covered = consent
            .as_ref()
            .is_some_and(|consent| consent.scopes.covers(&request.scopes));
        let first_party = request.client.settings.first_party;
        if !first_party && (request.prompt.is_some_and(Prompt::asks_consent) || !covered) {
            return self.page_or_error(request, Decision::Consent);
        }
        if !covered {
            // A first-party client is granted without asking; the grant is recorded all the
            // same, so the person sees it among their applications and can revoke it.
            self.save_consent(request, principal, consent, &ClientInfo::default())
                .await?;
        }
        Ok(Decision::Redirect(
            self.issue_code(request, principal.user.id, &session)
                .await?,
        ))
    }

    /// The person's answer on the consent page. `allow`: the scopes are remembered and the
    /// code issued; otherwise the client hears `access_denied`.
    ///
    /// # Errors
    /// `Redirect` with `access_denied`; `Backend`.
    pub async fn answer_consent(
        &self,
        request: &ValidRequest,
        principal: &Principal,
        allow: bool,
        client: &ClientInfo,
    ) -> Result<ClientRedirect, AuthorizeError> {
        if !allow {
            return Err(AuthorizeError::Redirect(self.error_redirect(
                &request.redirect_uri,
                request.state.as_deref(),
                "access_denied",
                "the user declined",
            )));
        }
        let session = match principal.session_id {
            Some(id) => self.sessions.find_session(id).await?,
            None => None,
        };
        let Some((session, _)) = session.filter(|(s, _)| s.is_live(self.clock.now())) else {
            return Err(AuthorizeError::Redirect(self.error_redirect(
                &request.redirect_uri,
                request.state.as_deref(),
                "login_required",
                "the sign-in ended",
            )));
        };
        let consent = self
            .grants
            .find_consent(principal.user.id, &request.client.id)
            .await?;
        self.save_consent(request, principal, consent, client)
            .await?;
        self.issue_code(request, principal.user.id, &session).await
    }

    /// The user's grants, most recent first.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    pub async fn grants(&self, user_id: UserId) -> Result<Vec<GrantView>, BackendError> {
        self.grants.list_consents(user_id).await
    }

    /// Ends a grant: the consent and every token of the user issued to that client. `false`
    /// when the user had not granted that client anything.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    pub async fn revoke_grant(
        &self,
        principal: &Principal,
        client_id: &ClientId,
        client: &ClientInfo,
    ) -> Result<bool, BackendError> {
        let now = self.clock.now();
        let audit = NewAuditEvent::new(
            AuditKind::GrantRevoked,
            Some(principal.user.id),
            client,
            now,
        )
        .with("client_id", client_id);
        self.grants
            .revoke_consent(principal.user.id, client_id, now, audit)
            .await
    }

    /// Where a relying party may send the browser after the console's sign-out: a URI
    /// registered for the client that the ID token hint (or `client_id`) names, or nowhere.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    pub async fn post_logout_redirect(
        &self,
        hinted_client: Option<ClientId>,
        client_id: Option<ClientId>,
        uri: &str,
    ) -> Result<Option<String>, BackendError> {
        let client_id = match (hinted_client, client_id) {
            (Some(hinted), Some(named)) if hinted != named => return Ok(None),
            (Some(id), _) | (None, Some(id)) => id,
            (None, None) => return Ok(None),
        };
        let client = self.clients.find_client(&client_id).await?;
        Ok(client
            .filter(|client| client.allows_post_logout(uri))
            .map(|_| uri.to_owned()))
    }

    fn page_or_error(
        &self,
        request: &ValidRequest,
        page: Decision,
    ) -> Result<Decision, AuthorizeError> {
        if request.prompt != Some(Prompt::None) {
            return Ok(page);
        }
        let (error, description) = match page {
            Decision::SignIn => ("login_required", "the user is not signed in"),
            _ => (
                "consent_required",
                "the user has not allowed this application",
            ),
        };
        Err(AuthorizeError::Redirect(self.error_redirect(
            &request.redirect_uri,
            request.state.as_deref(),
            error,
            description,
        )))
    }

    async fn save_consent(
        &self,
        request: &ValidRequest,
        principal: &Principal,
        earlier: Option<Consent>,
        client: &ClientInfo,
    ) -> Result<(), BackendError> {
        let now = self.clock.now();
        let scopes = earlier.as_ref().map_or_else(
            || request.scopes.clone(),
            |c| c.scopes.union(&request.scopes),
        );
        let added = earlier
            .as_ref()
            .is_none_or(|c| !c.scopes.covers(&request.scopes));
        let audit = added.then(|| {
            NewAuditEvent::new(
                AuditKind::GrantCreated,
                Some(principal.user.id),
                client,
                now,
            )
            .with("client_id", &request.client.id)
            .with("scopes", &scopes)
        });
        let consent = Consent {
            user_id: principal.user.id,
            client_id: request.client.id.clone(),
            scopes,
            granted_at: if added {
                now
            } else {
                earlier.as_ref().map_or(now, |c| c.granted_at)
            },
            last_used_at: earlier.and_then(|c| c.last_used_at),
        };
        self.grants.save_consent(&consent, audit).await
    }

    async fn issue_code(
        &self,
        request: &ValidRequest,
        user_id: UserId,
        session: &crate::domain::Session,
    ) -> Result<ClientRedirect, AuthorizeError> {
        let now = self.clock.now();
        let code = random_secret();
        let record = AuthorizationCode {
            hash: CodeHash::of(&code),
            client_id: request.client.id.clone(),
            user_id,
            redirect_uri: request.redirect_uri.clone(),
            code_challenge: request.code_challenge.clone(),
            nonce: request.nonce.clone(),
            scopes: request.scopes.clone(),
            session_id: session.id,
            auth_time: session.created_at,
            methods: session.methods.clone(),
            created_at: now,
            expires_at: now + self.policy.provider.code_ttl,
            spent_at: None,
            issued_session: None,
        };
        self.grants.store_code(&record).await?;
        let mut params = vec![("code", code)];
        if let Some(state) = &request.state {
            params.push(("state", state.clone()));
        }
        params.push(("iss", self.policy.provider.issuer.clone()));
        Ok(ClientRedirect {
            redirect_uri: request.redirect_uri.clone(),
            params,
        })
    }

    /// An error for the client at its redirect URI, with `state` and `iss` (RFC 9207).
    fn error_redirect(
        &self,
        redirect_uri: &str,
        state: Option<&str>,
        error: &'static str,
        description: &str,
    ) -> ClientRedirect {
        let mut params = vec![
            ("error", error.to_owned()),
            ("error_description", description.to_owned()),
        ];
        if let Some(state) = state {
            params.push(("state", state.to_owned()));
        }
        params.push(("iss", self.policy.provider.issuer.clone()));
        ClientRedirect {
            redirect_uri: redirect_uri.to_owned(),
            params,
        }
    }
}

#[cfg(test)]
mod tests;
