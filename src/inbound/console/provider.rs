//! The OpenID provider's pages for people: the authorization endpoint (sign-in through the
//! console, then the consent page), and the sign-out an application sends the browser to.
//!
//! The console's cookies are `SameSite=Strict`, so a browser that arrives from another site
//! brings none of them. Such an arrival gets a page that sends the browser to the same address
//! from here (a same-site hop, with a `<meta>` refresh: no script needed), and only then is it
//! decided whether someone is signed in. Answers that leave for the application after a form
//! are pages of that kind too, since some browsers hold a redirect after a form to the form's
//! `form-action`.

use std::sync::Arc;

use askama::Template;
use poem::http::StatusCode;
use poem::web::Data;
use poem::{Request, Response, handler};

use super::Console;
use super::forms::{Posted, signed_in_post};
use super::guard::{Visitor, see_other};
use super::pages::{Chrome, encode, message, render};
use crate::domain::oauth::{ClientId, Scope};
use crate::domain::service::{
    AuthorizationRequest, AuthorizeError, ClientRedirect, Decision, Prompt, ValidRequest,
};
use crate::inbound::web::errors::PROVIDER_OFF;
use crate::inbound::web::metrics::record_authorization;
use crate::inbound::web::problem::Problem;

/// A page that sends the browser on to `target` by itself.
#[derive(Template)]
#[template(path = "continue.html", config = "src/inbound/console/askama.toml")]
struct Continue {
    chrome: Chrome,
    target: String,
}

/// The consent page.
#[derive(Template)]
#[template(path = "consent.html", config = "src/inbound/console/askama.toml")]
struct ConsentPage {
    chrome: Chrome,
    client_name: String,
    email: String,
    /// What each scope lets the application do, in plain words.
    scopes: Vec<&'static str>,
    /// Where the browser goes after: the redirect URI's origin.
    destination: String,
    csrf: String,
    /// The authorization request, as its query string: sent back with the answer.
    request: String,
}

/// The parameters of a query string, each name at most once; the first repeated name is
/// remembered, since RFC 6749 section 3.1 forbids repeats.
fn read_request(query: &str) -> AuthorizationRequest {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
    let mut request = AuthorizationRequest::default();
    for (name, value) in pairs {
        let slot = match name.as_str() {
            "response_type" => &mut request.response_type,
            "client_id" => &mut request.client_id,
            "redirect_uri" => &mut request.redirect_uri,
            "scope" => &mut request.scope,
            "state" => &mut request.state,
            "nonce" => &mut request.nonce,
            "code_challenge" => &mut request.code_challenge,
            "code_challenge_method" => &mut request.code_challenge_method,
            "prompt" => &mut request.prompt,
            "max_age" => &mut request.max_age,
            "login_hint" => &mut request.login_hint,
            _ => continue,
        };
        if slot.is_some() {
            request.repeated.get_or_insert(name);
        } else {
            *slot = Some(value);
        }
    }
    request
}

/// The query string of a valid request, as the authorization endpoint reads it back. When
/// `fresh` (the way back from a sign-in), without `max_age` and the `login` of `prompt`, which a
/// sign-in just made meets; its `consent` stays.
fn request_query(request: &ValidRequest, fresh: bool) -> String {
    let mut pairs: Vec<(&str, String)> = vec![
        ("response_type", "code".to_owned()),
        ("client_id", request.client.id.to_string()),
        ("redirect_uri", request.redirect_uri.clone()),
        ("scope", request.scopes.to_string()),
        ("code_challenge", request.code_challenge.clone()),
        ("code_challenge_method", "S256".to_owned()),
    ];
    let optional = [
        ("state", request.state.clone()),
        ("nonce", request.nonce.clone()),
        ("login_hint", request.login_hint.clone()),
    ];
    pairs.extend(
        optional
            .into_iter()
            .filter_map(|(name, value)| Some((name, value?))),
    );
    let prompt = match request.prompt {
        Some(prompt) if fresh => prompt.after_sign_in(),
        prompt => prompt,
    };
    if let Some(prompt) = prompt {
        pairs.push(("prompt", prompt.as_str().to_owned()));
    }
    if let Some(max_age) = request.max_age.filter(|_| !fresh) {
        pairs.push(("max_age", max_age.num_seconds().to_string()));
    }
    serde_urlencoded::to_string(pairs).unwrap_or_default()
}

/// `redirect.redirect_uri` with its parameters added to the query.
fn redirect_url(redirect: &ClientRedirect) -> String {
    let query = serde_urlencoded::to_string(&redirect.params).unwrap_or_default();
    let separator = if redirect.redirect_uri.contains('?') {
        '&'
    } else {
        '?'
    };
    format!("{}{separator}{query}", redirect.redirect_uri)
}

/// Whether the browser came from another site without the console's cookies, and must first
/// be sent here again from this site.
fn needs_hop(req: &Request, visitor: &Visitor) -> bool {
    let cross_site = req
        .headers()
        .get("sec-fetch-site")
        .is_some_and(|site| site.as_bytes() == b"cross-site");
    cross_site && visitor.principal().is_none()
}

/// A page that sends the browser to `target` by itself (same-site hops, and departures after
/// a form).
pub(super) fn continue_page(target: &str) -> Response {
    render(
        &Continue {
            chrome: Chrome::anonymous("Continue"),
            target: target.to_owned(),
        },
        StatusCode::OK,
    )
}

impl Console {
    /// [`continue_page`], with the cookies the visit needs.
    fn continue_to(&self, visitor: &Visitor, target: String) -> Response {
        let mut response = continue_page(&target);
        visitor.finish(&self.settings, &mut response);
        response
    }

    /// The answer to an authorization request that gets no code here.
    fn refusal(&self, visitor: Option<&Visitor>, err: AuthorizeError) -> Response {
        let page = |status, text: &str| {
            let chrome = match visitor {
                Some(visitor) => Chrome::new("Sign-in refused", visitor),
                None => Chrome::anonymous("Sign-in refused"),
            };
            message(status, chrome, text)
        };
        match err {
            AuthorizeError::Redirect(redirect) => {
                let denied = redirect
                    .params
                    .iter()
                    .any(|(name, value)| *name == "error" && value == "access_denied");
                record_authorization(if denied { "denied" } else { "error" });
                see_other(&redirect_url(&redirect))
            }
            AuthorizeError::NotRedirectable(why) => {
                record_authorization("refused");
                page(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "The application that sent you here made a request Portcullis cannot \
                         answer: {why}. Nothing was shared with it."
                    ),
                )
            }
            AuthorizeError::Off => page(StatusCode::SERVICE_UNAVAILABLE, PROVIDER_OFF),
            AuthorizeError::Backend(err) => {
                let problem = Problem::from(err);
                page(problem.status, &super::form_state::alert(&problem))
            }
        }
    }
}

/// `GET /oauth/authorize`.
#[handler]
pub(super) async fn authorize(req: &Request, console: Data<&Arc<Console>>) -> Response {
    let request = read_request(req.uri().query().unwrap_or_default());
    let valid = match console.core.authorizations.check(request).await {
        Ok(valid) => valid,
        Err(err) => return console.refusal(None, err),
    };
    let visitor = or_page!(console.visitor(req).await);
    if needs_hop(req, &visitor) {
        let target = format!("/oauth/authorize?{}", request_query(&valid, false));
        return console.continue_to(&visitor, target);
    }
    let decision = console
        .core
        .authorizations
        .decide(&valid, visitor.principal())
        .await;
    let mut response = match decision {
        Ok(Decision::Redirect(redirect)) => {
            record_authorization("code");
            see_other(&redirect_url(&redirect))
        }
        Ok(Decision::SignIn) => {
            record_authorization("sign_in");
            let again = valid.prompt.is_some_and(Prompt::asks_sign_in) || valid.max_age.is_some();
            let next = format!("/oauth/authorize?{}", request_query(&valid, true));
            let mut target = format!("/console/sign-in?next={}", encode(&next));
            if let Some(hint) = &valid.login_hint {
                target.push_str(&format!("&login_hint={}", encode(hint)));
            }
            if again {
                target.push_str("&reauth=1");
            }
            see_other(&target)
        }
        Ok(Decision::Consent) => {
            record_authorization("consent");
            return consent_page(&console, &visitor, &valid);
        }
        Err(err) => return console.refusal(Some(&visitor), err),
    };
    visitor.finish(&console.settings, &mut response);
    response
}

fn consent_page(console: &Console, visitor: &Visitor, request: &ValidRequest) -> Response {
    let destination = request
        .redirect_uri
        .split_once("://")
        .map_or(request.redirect_uri.as_str(), |(_, rest)| {
            rest.split(['/', '?']).next().unwrap_or(rest)
        })
        .to_owned();
    let page = ConsentPage {
        chrome: Chrome::new(
            &format!("Sign in to {}", request.client.settings.name),
            visitor,
        ),
        client_name: request.client.settings.name.clone(),
        email: visitor
            .principal()
            .map(|p| p.user.email.as_str().to_owned())
            .unwrap_or_default(),
        scopes: request.scopes.iter().map(Scope::explained).collect(),
        destination,
        csrf: visitor.session_csrf().unwrap_or_default(),
        request: request_query(request, true),
    };
    console.page(visitor, &page, StatusCode::OK)
}

/// `POST /oauth/authorize`: the consent page's answer, from this site only, with the
/// session's CSRF token.
#[handler]
pub(super) async fn answer_consent(
    req: &Request,
    console: Data<&Arc<Console>>,
    form: Posted,
) -> Response {
    let (visitor, principal, fields) = or_page!(signed_in_post(req, &console, form).await);
    let request = read_request(fields.get("request"));
    let valid = match console.core.authorizations.check(request).await {
        Ok(valid) => valid,
        Err(err) => return console.refusal(Some(&visitor), err),
    };
    let allow = fields.get("decision") == "allow";
    let answered = console
        .core
        .authorizations
        .answer_consent(&valid, &principal, allow, &console.client(req))
        .await;
    match answered {
        Ok(redirect) => {
            record_authorization("code");
            console.continue_to(&visitor, redirect_url(&redirect))
        }
        Err(AuthorizeError::Redirect(redirect)) => {
            record_authorization("denied");
            console.continue_to(&visitor, redirect_url(&redirect))
        }
        Err(err) => console.refusal(Some(&visitor), err),
    }
}

/// `GET /oauth/logout` (OpenID Connect RP-Initiated Logout 1.0): ends the browser's console
/// session; then back to the application only to a post-logout URI registered for the client
/// that the ID token hint (or `client_id`) names, else a page that says so.
#[handler]
pub(super) async fn logout(req: &Request, console: Data<&Arc<Console>>) -> Response {
    #[derive(serde::Deserialize, Default)]
    struct LogoutQuery {
        id_token_hint: Option<String>,
        client_id: Option<String>,
        post_logout_redirect_uri: Option<String>,
        state: Option<String>,
    }
    if !console.core.authorizations.enabled() {
        return message(
            StatusCode::SERVICE_UNAVAILABLE,
            Chrome::anonymous("Sign out"),
            PROVIDER_OFF,
        );
    }
    let query: LogoutQuery = req.params().unwrap_or_default();
    let visitor = or_page!(console.visitor(req).await);
    if needs_hop(req, &visitor) {
        let target = format!("/oauth/logout?{}", req.uri().query().unwrap_or_default());
        return console.continue_to(&visitor, target);
    }
    if let Some(principal) = visitor.principal()
        && let Err(err) = console
            .core
            .sessions
            .logout(principal, &console.client(req))
            .await
    {
        let problem = Problem::from(err);
        return message(
            problem.status,
            Chrome::anonymous("Sign out"),
            &super::form_state::alert(&problem),
        );
    }
    let hinted = query
        .id_token_hint
        .as_deref()
        .and_then(|hint| console.core.client_tokens.hinted_client(hint));
    let target = match query.post_logout_redirect_uri.as_deref() {
        Some(uri) => or_page!(
            console
                .core
                .authorizations
                .post_logout_redirect(hinted, query.client_id.map(ClientId), uri)
                .await
                .map_err(|err| console.refusal(None, err.into()))
        ),
        None => None,
    };
    let mut response = match target {
        Some(uri) => {
            let redirect = ClientRedirect {
                redirect_uri: uri,
                params: query
                    .state
                    .map(|state| ("state", state))
                    .into_iter()
                    .collect(),
            };
            see_other(&redirect_url(&redirect))
        }
        None => message(
            StatusCode::OK,
            Chrome::anonymous("Signed out"),
            "You are signed out of Portcullis. You can close this page.",
        ),
    };
    let settings = &console.settings;
    response.headers_mut().append(
        poem::http::header::SET_COOKIE,
        settings.set_cookie(&settings.session_cookie(), None),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_parameter_is_named_and_the_first_value_kept() {
        let request = read_request("client_id=a&scope=openid&client_id=b&x=1");
        assert_eq!(request.client_id.as_deref(), Some("a"));
        assert_eq!(request.repeated.as_deref(), Some("client_id"));
        assert_eq!(read_request("%%%").client_id, None);
    }

    #[test]
    fn redirect_parameters_are_encoded_and_appended() {
        let redirect = ClientRedirect {
            redirect_uri: "https://app.example/cb?tenant=1".into(),
            params: vec![("code", "a b&c".into()), ("state", "s/1".into())],
        };
        assert_eq!(
            redirect_url(&redirect),
            "https://app.example/cb?tenant=1&code=a+b%26c&state=s%2F1"
        );
    }
}
