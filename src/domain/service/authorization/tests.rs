use chrono::TimeDelta;
use mockall::predicate::eq;

use super::super::test_support::{Mocks, now, oauth_client, provider_policy, session, user};
use super::*;
use crate::domain::oauth::Scope;
use crate::domain::{Role, SessionId};

const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

fn request() -> AuthorizationRequest {
    AuthorizationRequest {
        response_type: Some("code".into()),
        client_id: Some("client-1".into()),
        redirect_uri: Some("https://wiki.example/cb".into()),
        scope: Some("openid email".into()),
        state: Some("st".into()),
        nonce: Some("n-1".into()),
        code_challenge: Some(CHALLENGE.into()),
        code_challenge_method: Some("S256".into()),
        ..AuthorizationRequest::default()
    }
}

fn mocks(client: OAuthClient) -> Mocks {
    let mut m = Mocks::new();
    m.policy = provider_policy();
    m.clients
        .expect_find_client()
        .returning(move |_| Ok(Some(client.clone())));
    m
}

fn redirect_error(err: AuthorizeError) -> (String, Vec<(&'static str, String)>) {
    match err {
        AuthorizeError::Redirect(redirect) => (redirect.redirect_uri, redirect.params),
        other => panic!("expected a redirect, got {other:?}"),
    }
}

fn param<'a>(params: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.as_str())
}

fn principal(session_id: SessionId) -> Principal {
    Principal {
        user: user(7, Role::User, true),
        session_id: Some(session_id),
    }
}

#[tokio::test]
async fn an_unknown_client_or_an_unregistered_redirect_uri_is_never_redirected_to() {
    let mut m = Mocks::new();
    m.policy = provider_policy();
    m.clients.expect_find_client().returning(|_| Ok(None));
    let core = m.service();
    let err = core.authorizations.check(request()).await.unwrap_err();
    assert!(matches!(err, AuthorizeError::NotRedirectable(_)), "{err:?}");

    let core = mocks(oauth_client(false)).service();
    for uri in [
        "https://wiki.example/cb/",
        "https://wiki.example/cB",
        "https://evil.example/cb",
    ] {
        let err = core
            .authorizations
            .check(AuthorizationRequest {
                redirect_uri: Some(uri.into()),
                ..request()
            })
            .await
            .unwrap_err();
        assert!(
            matches!(err, AuthorizeError::NotRedirectable(_)),
            "{uri}: {err:?}"
        );
    }
    // A second redirect_uri is not trusted either.
    let err = core
        .authorizations
        .check(AuthorizationRequest {
            repeated: Some("redirect_uri".into()),
            ..request()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, AuthorizeError::NotRedirectable(_)));
}

#[tokio::test]
async fn pkce_is_required_as_s256_and_errors_go_back_with_state_and_issuer() {
    let core = mocks(oauth_client(false)).service();
    for broken in [
        AuthorizationRequest {
            code_challenge: None,
            ..request()
        },
        AuthorizationRequest {
            code_challenge_method: Some("plain".into()),
            ..request()
        },
        AuthorizationRequest {
            code_challenge_method: None,
            ..request()
        },
        AuthorizationRequest {
            repeated: Some("scope".into()),
            ..request()
        },
    ] {
        let (uri, params) = redirect_error(core.authorizations.check(broken).await.unwrap_err());
        assert_eq!(uri, "https://wiki.example/cb");
        assert_eq!(param(&params, "error"), Some("invalid_request"));
        assert_eq!(param(&params, "state"), Some("st"));
        assert_eq!(param(&params, "iss"), Some("https://auth.example"));
    }
    let (_, params) = redirect_error(
        core.authorizations
            .check(AuthorizationRequest {
                response_type: Some("token".into()),
                ..request()
            })
            .await
            .unwrap_err(),
    );
    assert_eq!(param(&params, "error"), Some("unsupported_response_type"));
}

#[tokio::test]
async fn scopes_must_be_known_and_allowed_for_the_client() {
    let mut client = oauth_client(false);
    client.settings.scopes = crate::domain::oauth::Scopes::of([Scope::OpenId]);
    let core = mocks(client).service();
    for scope in ["openid admin", "openid email", ""] {
        let (_, params) = redirect_error(
            core.authorizations
                .check(AuthorizationRequest {
                    scope: Some(scope.into()),
                    ..request()
                })
                .await
                .unwrap_err(),
        );
        assert_eq!(param(&params, "error"), Some("invalid_scope"), "{scope}");
    }
    let valid = core.authorizations.check(AuthorizationRequest {
        scope: Some("openid".into()),
        ..request()
    });
    assert_eq!(valid.await.unwrap().scopes.to_string(), "openid");
}

#[tokio::test]
async fn the_provider_off_answers_nothing() {
    let core = Mocks::new().service();
    let err = core.authorizations.check(request()).await.unwrap_err();
    assert!(matches!(err, AuthorizeError::Off));
}

#[tokio::test]
async fn nobody_signed_in_means_the_sign_in_page_or_login_required() {
    let core = mocks(oauth_client(false)).service();
    let valid = core.authorizations.check(request()).await.unwrap();
    assert_eq!(
        core.authorizations.decide(&valid, None).await.unwrap(),
        Decision::SignIn
    );
    let silent = ValidRequest {
        prompt: Some(Prompt::None),
        ..valid
    };
    let (_, params) = redirect_error(core.authorizations.decide(&silent, None).await.unwrap_err());
    assert_eq!(param(&params, "error"), Some("login_required"));
}

#[tokio::test]
async fn a_remembered_consent_issues_a_code_bound_to_the_request_and_the_sign_in() {
    let sid = SessionId::random();
    let mut m = mocks(oauth_client(false));
    m.sessions
        .expect_find_session()
        .with(eq(sid))
        .returning(move |id| Ok(Some((session(id, 7), user(7, Role::User, true)))));
    m.grants
        .expect_find_consent()
        .returning(|user_id, client_id| {
            Ok(Some(Consent {
                user_id,
                client_id: client_id.clone(),
                scopes: crate::domain::oauth::Scopes::all(),
                granted_at: now(),
                last_used_at: None,
            }))
        });
    m.grants.expect_save_consent().never();
    m.grants
        .expect_store_code()
        .withf(move |code| {
            code.client_id.as_str() == "client-1"
                && code.user_id == UserId(7)
                && code.redirect_uri == "https://wiki.example/cb"
                && code.code_challenge == CHALLENGE
                && code.nonce.as_deref() == Some("n-1")
                && code.scopes.to_string() == "openid email"
                && code.session_id == sid
                && code.auth_time == now()
                && code.expires_at == now() + TimeDelta::seconds(60)
                && code.spent_at.is_none()
        })
        .times(1)
        .returning(|_| Ok(()));
    let core = m.service();
    let valid = core.authorizations.check(request()).await.unwrap();
    let Decision::Redirect(redirect) = core
        .authorizations
        .decide(&valid, Some(&principal(sid)))
        .await
        .unwrap()
    else {
        panic!("expected a code");
    };
    assert_eq!(redirect.redirect_uri, "https://wiki.example/cb");
    let code = param(&redirect.params, "code").unwrap();
    assert_eq!(code.len(), 43);
    assert_eq!(param(&redirect.params, "state"), Some("st"));
    assert_eq!(param(&redirect.params, "iss"), Some("https://auth.example"));
}

#[tokio::test]
async fn consent_is_asked_for_scopes_not_granted_and_never_silently() {
    let sid = SessionId::random();
    let mut m = mocks(oauth_client(false));
    m.sessions
        .expect_find_session()
        .returning(move |id| Ok(Some((session(id, 7), user(7, Role::User, true)))));
    m.grants
        .expect_find_consent()
        .returning(|user_id, client_id| {
            Ok(Some(Consent {
                user_id,
                client_id: client_id.clone(),
                scopes: crate::domain::oauth::Scopes::of([Scope::OpenId]),
                granted_at: now(),
                last_used_at: None,
            }))
        });
    m.grants.expect_store_code().never();
    let core = m.service();
    let valid = core.authorizations.check(request()).await.unwrap();
    assert_eq!(
        core.authorizations
            .decide(&valid, Some(&principal(sid)))
            .await
            .unwrap(),
        Decision::Consent
    );
    let silent = ValidRequest {
        prompt: Some(Prompt::None),
        ..valid
    };
    let (_, params) = redirect_error(
        core.authorizations
            .decide(&silent, Some(&principal(sid)))
            .await
            .unwrap_err(),
    );
    assert_eq!(param(&params, "error"), Some("consent_required"));
}

#[tokio::test]
async fn prompt_login_and_an_old_sign_in_ask_for_a_fresh_one() {
    let sid = SessionId::random();
    let mut m = mocks(oauth_client(false));
    m.now = now() + TimeDelta::minutes(10);
    m.sessions
        .expect_find_session()
        .returning(move |id| Ok(Some((session(id, 7), user(7, Role::User, true)))));
    let core = m.service();
    let valid = core.authorizations.check(request()).await.unwrap();
    for request in [
        ValidRequest {
            prompt: Some(Prompt::Login),
            ..valid.clone()
        },
        ValidRequest {
            max_age: Some(TimeDelta::minutes(5)),
            ..valid
        },
    ] {
        assert_eq!(
            core.authorizations
                .decide(&request, Some(&principal(sid)))
                .await
                .unwrap(),
            Decision::SignIn
        );
    }
}

#[tokio::test]
async fn a_first_party_client_is_granted_without_asking_and_the_grant_is_recorded() {
    let mut client = oauth_client(false);
    client.settings.first_party = true;
    let mut m = mocks(client);
    m.sessions
        .expect_find_session()
        .returning(move |id| Ok(Some((session(id, 7), user(7, Role::User, true)))));
    m.grants.expect_find_consent().returning(|_, _| Ok(None));
    m.grants
        .expect_save_consent()
        .withf(|consent, audit| {
            consent.scopes.to_string() == "openid email"
                && audit
                    .as_ref()
                    .is_some_and(|event| event.kind == AuditKind::GrantCreated)
        })
        .times(1)
        .returning(|_, _| Ok(()));
    m.grants.expect_store_code().times(1).returning(|_| Ok(()));
    let core = m.service();
    let valid = core.authorizations.check(request()).await.unwrap();
    let decision = core
        .authorizations
        .decide(&valid, Some(&principal(SessionId::random())))
        .await
        .unwrap();
    assert!(matches!(decision, Decision::Redirect(_)));
}

#[tokio::test]
async fn a_declined_consent_is_access_denied_and_an_allowed_one_adds_to_the_earlier() {
    let sid = SessionId::random();
    let mut m = mocks(oauth_client(false));
    m.sessions
        .expect_find_session()
        .returning(move |id| Ok(Some((session(id, 7), user(7, Role::User, true)))));
    m.grants
        .expect_find_consent()
        .returning(|user_id, client_id| {
            Ok(Some(Consent {
                user_id,
                client_id: client_id.clone(),
                scopes: crate::domain::oauth::Scopes::of([Scope::Profile]),
                granted_at: now(),
                last_used_at: None,
            }))
        });
    m.grants
        .expect_save_consent()
        .withf(|consent, audit| {
            consent.scopes.to_string() == "openid profile email" && audit.is_some()
        })
        .times(1)
        .returning(|_, _| Ok(()));
    m.grants.expect_store_code().times(1).returning(|_| Ok(()));
    let core = m.service();
    let valid = core.authorizations.check(request()).await.unwrap();
    let from = ClientInfo::default();
    let (_, params) = redirect_error(
        core.authorizations
            .answer_consent(&valid, &principal(sid), false, &from)
            .await
            .unwrap_err(),
    );
    assert_eq!(param(&params, "error"), Some("access_denied"));
    assert_eq!(param(&params, "state"), Some("st"));
    let redirect = core
        .authorizations
        .answer_consent(&valid, &principal(sid), true, &from)
        .await
        .unwrap();
    assert!(param(&redirect.params, "code").is_some());
}

#[tokio::test]
async fn a_post_logout_redirect_must_be_registered_for_the_named_client() {
    let mut m = mocks(oauth_client(false));
    m.grants.expect_find_consent().never();
    let core = m.service();
    let id = || Some(ClientId("client-1".into()));
    let target = |hint, named, uri: &'static str| {
        let core = &core;
        async move {
            core.authorizations
                .post_logout_redirect(hint, named, uri)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        target(id(), None, "https://wiki.example/bye")
            .await
            .as_deref(),
        Some("https://wiki.example/bye")
    );
    assert_eq!(target(None, id(), "https://evil.example/").await, None);
    assert_eq!(target(None, None, "https://wiki.example/bye").await, None);
    assert_eq!(
        target(
            id(),
            Some(ClientId("other".into())),
            "https://wiki.example/bye"
        )
        .await,
        None
    );
}

#[test]
fn prompt_takes_none_alone_or_login_and_consent_together() {
    assert_eq!(Prompt::parse(""), Some(None));
    assert_eq!(Prompt::parse("none"), Some(Some(Prompt::None)));
    assert_eq!(
        Prompt::parse("consent login"),
        Some(Some(Prompt::LoginAndConsent))
    );
    assert_eq!(Prompt::parse("login"), Some(Some(Prompt::Login)));
    assert_eq!(Prompt::parse("none login"), None);
    assert_eq!(Prompt::parse("select_account"), None);
    // After a sign-in made for it, only the consent it asks for is left.
    assert_eq!(
        Prompt::LoginAndConsent.after_sign_in(),
        Some(Prompt::Consent)
    );
    assert_eq!(Prompt::Consent.after_sign_in(), Some(Prompt::Consent));
    assert_eq!(Prompt::Login.after_sign_in(), None);
}

#[tokio::test]
async fn prompt_consent_asks_again_although_the_scopes_were_granted() {
    let sid = SessionId::random();
    let mut m = mocks(oauth_client(false));
    m.sessions
        .expect_find_session()
        .returning(move |id| Ok(Some((session(id, 7), user(7, Role::User, true)))));
    m.grants
        .expect_find_consent()
        .returning(|user_id, client_id| {
            Ok(Some(Consent {
                user_id,
                client_id: client_id.clone(),
                scopes: crate::domain::oauth::Scopes::all(),
                granted_at: now(),
                last_used_at: None,
            }))
        });
    m.grants.expect_store_code().never();
    let core = m.service();
    let valid = core
        .authorizations
        .check(AuthorizationRequest {
            prompt: Some("consent".into()),
            ..request()
        })
        .await
        .unwrap();
    assert_eq!(
        core.authorizations
            .decide(&valid, Some(&principal(sid)))
            .await
            .unwrap(),
        Decision::Consent
    );
}

mod properties {
    use proptest::prelude::*;

    use super::super::Prompt;
    use crate::properties::config;

    proptest! {
        #![proptest_config(config(512))]

        #[test]
        fn a_prompt_reads_back_its_own_values_in_any_order_and_spacing(
            values in prop::collection::vec("(none|login|consent|select_account|Login)", 0..4),
            spaces in prop::collection::vec(" {0,2}", 5),
        ) {
            let text: String = values
                .iter()
                .zip(&spaces)
                .map(|(value, space)| format!("{space}{value} "))
                .collect();
            let distinct: std::collections::BTreeSet<&str> =
                values.iter().map(String::as_str).collect();
            match Prompt::parse(&text) {
                Some(Some(prompt)) => {
                    let named: std::collections::BTreeSet<&str> =
                        prompt.as_str().split(' ').collect();
                    prop_assert_eq!(named, distinct);
                    prop_assert_eq!(Prompt::parse(prompt.as_str()), Some(Some(prompt)));
                }
                Some(None) => prop_assert!(distinct.is_empty()),
                // `none` with another value, or a value OpenID Connect does not define here.
                None => prop_assert!(
                    (distinct.contains("none") && distinct.len() > 1)
                        || distinct.iter().any(|v| !matches!(*v, "none" | "login" | "consent"))
                ),
            }
        }
    }
}
