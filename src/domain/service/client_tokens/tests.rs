use chrono::TimeDelta;
use mockall::predicate::eq;

use super::super::test_support::{Mocks, now, oauth_client, provider_policy, session, user};
use super::*;
use crate::domain::oauth::{AuthorizationCode, Consent};
use crate::domain::{RefreshTokenRecord, Role};

const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

fn mocks() -> Mocks {
    let mut m = Mocks::new();
    m.policy = provider_policy();
    m
}

fn code(console: SessionId) -> AuthorizationCode {
    AuthorizationCode {
        hash: CodeHash::of("the-code"),
        client_id: ClientId("client-1".into()),
        user_id: UserId(7),
        redirect_uri: "https://wiki.example/cb".into(),
        code_challenge: CHALLENGE.into(),
        nonce: Some("n-1".into()),
        scopes: Scopes::parse("openid email offline_access").unwrap(),
        session_id: console,
        auth_time: now() - TimeDelta::minutes(3),
        methods: vec![crate::domain::mfa::AuthMethod::Password],
        created_at: now(),
        expires_at: now() + TimeDelta::seconds(60),
        spent_at: None,
        issued_session: None,
    }
}

fn consent(scopes: &str) -> Consent {
    Consent {
        user_id: UserId(7),
        client_id: ClientId("client-1".into()),
        scopes: Scopes::parse(scopes).unwrap(),
        granted_at: now(),
        last_used_at: None,
    }
}

fn expect_code(m: &mut Mocks, code: AuthorizationCode) {
    m.grants
        .expect_find_code()
        .with(eq(CodeHash::of("the-code")))
        .returning(move |_| Ok(Some(code.clone())));
}

fn expect_console_session(m: &mut Mocks) {
    m.sessions
        .expect_find_session()
        .returning(|id| Ok(Some((session(id, 7), user(7, Role::User, true)))));
}

fn from() -> ClientInfo {
    ClientInfo::default()
}

#[tokio::test]
async fn clients_prove_who_they_are_by_the_method_they_registered_for() {
    let mut m = mocks();
    m.clients
        .expect_find_client()
        .returning(|id| Ok((id.as_str() == "client-1").then(|| oauth_client(false))));
    let core = m.service();
    let basic = |secret: &str| ClientAuth::Basic {
        client_id: "client-1".into(),
        secret: secret.into(),
    };
    assert!(
        core.client_tokens
            .authenticate(&basic("secret"), &from())
            .await
            .is_ok()
    );
    assert!(matches!(
        core.client_tokens
            .authenticate(&basic("wrong"), &from())
            .await,
        Err(TokenEndpointError::InvalidClient { basic: true })
    ));
    let post = ClientAuth::Post {
        client_id: "client-1".into(),
        secret: "secret".into(),
    };
    assert!(
        core.client_tokens
            .authenticate(&post, &from())
            .await
            .is_ok()
    );
    // A confidential client that sends no secret is not authenticated.
    let none = ClientAuth::Public {
        client_id: "client-1".into(),
    };
    assert!(matches!(
        core.client_tokens.authenticate(&none, &from()).await,
        Err(TokenEndpointError::InvalidClient { basic: false })
    ));
    let unknown = ClientAuth::Post {
        client_id: "nobody".into(),
        secret: "secret".into(),
    };
    assert!(matches!(
        core.client_tokens.authenticate(&unknown, &from()).await,
        Err(TokenEndpointError::InvalidClient { .. })
    ));
}

#[tokio::test]
async fn a_wrong_secret_counts_against_the_clients_budget_until_it_is_refused() {
    let mut m = mocks();
    let mut limiter = crate::domain::ports::MockRateLimiter::new();
    let mut count = 0;
    limiter.expect_increment().returning(move |bucket, _| {
        count += u32::from(bucket.starts_with("client_token:"));
        Ok(count)
    });
    m.limiter = Some(limiter);
    m.policy.limits.token_per_ip.max = 1000;
    m.policy.limits.token_per_client.max = 3;
    m.clients
        .expect_find_client()
        .returning(|_| Ok(Some(oauth_client(false))));
    let core = m.service();
    let wrong = ClientAuth::Basic {
        client_id: "client-1".into(),
        secret: "wrong".into(),
    };
    let from = ClientInfo::new(None, Some("192.0.2.1".into()));
    let mut refused = 0;
    for _ in 0..6 {
        match core.client_tokens.authenticate(&wrong, &from).await {
            Err(TokenEndpointError::InvalidClient { .. }) => {}
            Err(TokenEndpointError::Throttled(_)) => refused += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!(refused >= 1);
}

#[tokio::test]
async fn a_code_is_refused_unless_every_binding_matches() {
    let console = SessionId::random();
    let client = oauth_client(false);
    let mut other_client = oauth_client(false);
    other_client.id = ClientId("client-2".into());
    let expired = AuthorizationCode {
        expires_at: now() - TimeDelta::seconds(1),
        ..code(console)
    };
    for (record, client, redirect, verifier) in [
        // Another client's code.
        (
            code(console),
            &other_client,
            "https://wiki.example/cb",
            VERIFIER,
        ),
        // Another redirect URI, by one character.
        (code(console), &client, "https://wiki.example/cb/", VERIFIER),
        // A wrong verifier.
        (
            code(console),
            &client,
            "https://wiki.example/cb",
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXK",
        ),
        // Expired.
        (expired, &client, "https://wiki.example/cb", VERIFIER),
    ] {
        let mut m = mocks();
        expect_code(&mut m, record);
        m.sessions.expect_find_session().never();
        m.sessions.expect_create_session().never();
        m.grants.expect_spend_code().never();
        let core = m.service();
        let err = core
            .client_tokens
            .exchange_code(client, "the-code", redirect, verifier, &from())
            .await
            .unwrap_err();
        assert!(
            matches!(err, TokenEndpointError::InvalidGrant(_)),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn a_code_exchanged_opens_a_session_of_the_client_and_hands_out_its_tokens() {
    let console = SessionId::random();
    let mut m = mocks();
    expect_code(&mut m, code(console));
    expect_console_session(&mut m);
    m.sessions
        .expect_create_session()
        .withf(|new, key| {
            new.client_id.as_ref().map(ClientId::as_str) == Some("client-1")
                && new.user_id == UserId(7)
                && matches!(key, SessionKey::RefreshToken(_))
        })
        .times(1)
        .returning(|new, _| {
            let mut opened = session(new.id, 7);
            opened.client_id = new.client_id;
            Ok(opened)
        });
    m.grants
        .expect_spend_code()
        .times(1)
        .returning(|_, _, _| Ok(true));
    m.grants.expect_touch_consent().returning(|_, _, _| Ok(()));
    m.provider_tokens
        .expect_issue_client_access()
        .withf(|claims| {
            claims.client_id.as_str() == "client-1"
                && matches!(
                    claims.subject,
                    TokenSubject::User {
                        user_id: UserId(7),
                        ..
                    }
                )
                && claims.scopes.to_string() == "openid email offline_access"
        })
        .returning(|_| Ok("access".into()));
    m.provider_tokens
        .expect_issue_id_token()
        .withf(|claims, access| {
            access == "access"
                && claims.nonce.as_deref() == Some("n-1")
                && claims.auth_time == now() - TimeDelta::minutes(3)
                && claims
                    .email
                    .as_ref()
                    .is_some_and(|(email, _)| email == "user7@example.com")
                && claims.name.is_none()
        })
        .returning(|_, _| Ok("id".into()));
    let core = m.service();
    let set = core
        .client_tokens
        .exchange_code(
            &oauth_client(false),
            "the-code",
            "https://wiki.example/cb",
            VERIFIER,
            &from(),
        )
        .await
        .unwrap();
    assert_eq!(set.access_token, "access");
    assert_eq!(set.id_token.as_deref(), Some("id"));
    assert!(set.refresh_token.is_some_and(|token| token.len() >= 43));
}

#[tokio::test]
async fn a_code_presented_again_ends_the_tokens_of_its_first_exchange() {
    let issued = SessionId::random();
    let mut m = mocks();
    expect_code(
        &mut m,
        AuthorizationCode {
            spent_at: Some(now()),
            issued_session: Some(issued),
            ..code(SessionId::random())
        },
    );
    m.sessions
        .expect_end_session()
        .withf(move |user, id, _, audit| {
            *user == UserId(7) && *id == issued && audit.kind == AuditKind::OAuthCodeReused
        })
        .times(1)
        .returning(|_, _, _, _| Ok(true));
    m.sessions.expect_create_session().never();
    let core = m.service();
    let err = core
        .client_tokens
        .exchange_code(
            &oauth_client(false),
            "the-code",
            "https://wiki.example/cb",
            VERIFIER,
            &from(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, TokenEndpointError::InvalidGrant(_)));
}

#[tokio::test]
async fn a_code_whose_sign_in_ended_is_refused() {
    let mut m = mocks();
    expect_code(&mut m, code(SessionId::random()));
    m.sessions.expect_find_session().returning(|id| {
        let mut ended = session(id, 7);
        ended.ended_at = Some(now());
        Ok(Some((ended, user(7, Role::User, true))))
    });
    m.sessions.expect_create_session().never();
    let core = m.service();
    let err = core
        .client_tokens
        .exchange_code(
            &oauth_client(false),
            "the-code",
            "https://wiki.example/cb",
            VERIFIER,
            &from(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, TokenEndpointError::InvalidGrant(_)));
}

fn refresh_record(client: Option<&str>, spent: bool) -> RefreshTokenRecord {
    let mut grant = session(SessionId::random(), 7);
    grant.client_id = client.map(|id| ClientId(id.into()));
    RefreshTokenRecord {
        expires_at: now() + TimeDelta::days(1),
        spent_at: spent.then(now),
        session: grant,
        user: user(7, Role::User, true),
    }
}

#[tokio::test]
async fn another_clients_or_portcullis_own_refresh_token_is_refused_and_left_alone() {
    for owner in [Some("client-2"), None] {
        let mut m = mocks();
        let record = refresh_record(owner, false);
        m.sessions
            .expect_find_refresh_token()
            .returning(move |_| Ok(Some(record.clone())));
        m.sessions.expect_rotate_refresh_token().never();
        m.sessions.expect_end_session().never();
        let core = m.service();
        let err = core
            .client_tokens
            .refresh(&oauth_client(false), "rt", None, &from())
            .await
            .unwrap_err();
        assert!(matches!(err, TokenEndpointError::InvalidGrant(_)));
    }
}

#[tokio::test]
async fn a_spent_refresh_token_presented_again_ends_its_grants_session() {
    let mut m = mocks();
    let record = refresh_record(Some("client-1"), true);
    let id = record.session.id;
    m.sessions
        .expect_find_refresh_token()
        .returning(move |_| Ok(Some(record.clone())));
    m.sessions
        .expect_end_session()
        .withf(move |_, ended, _, audit| {
            *ended == id && audit.kind == AuditKind::SessionRefreshReused
        })
        .times(1)
        .returning(|_, _, _, _| Ok(true));
    let core = m.service();
    let err = core
        .client_tokens
        .refresh(&oauth_client(false), "rt", None, &from())
        .await
        .unwrap_err();
    assert!(matches!(err, TokenEndpointError::InvalidGrant(_)));
}

#[tokio::test]
async fn a_refresh_rotates_and_may_narrow_the_scopes_but_never_widen_them() {
    let mut m = mocks();
    let record = refresh_record(Some("client-1"), false);
    m.sessions
        .expect_find_refresh_token()
        .returning(move |_| Ok(Some(record.clone())));
    m.grants
        .expect_find_consent()
        .returning(|_, _| Ok(Some(consent("openid email offline_access"))));
    m.sessions
        .expect_rotate_refresh_token()
        .times(1)
        .returning(|_, _, _| Ok(Rotation::Rotated));
    m.grants.expect_touch_consent().returning(|_, _, _| Ok(()));
    m.provider_tokens
        .expect_issue_client_access()
        .withf(|claims| claims.scopes.to_string() == "openid offline_access")
        .returning(|_| Ok("access".into()));
    m.provider_tokens.expect_issue_id_token().never();
    let core = m.service();
    let client = oauth_client(false);
    let err = core
        .client_tokens
        .refresh(&client, "rt", Some("openid profile"), &from())
        .await
        .unwrap_err();
    assert!(matches!(err, TokenEndpointError::InvalidScope(_)));
    let set = core
        .client_tokens
        .refresh(&client, "rt", Some("openid offline_access"), &from())
        .await
        .unwrap();
    assert!(set.refresh_token.is_some());
    assert_eq!(set.scopes.to_string(), "openid offline_access");
}

#[tokio::test]
async fn a_refresh_narrowed_below_offline_access_still_hands_out_the_rotated_token() {
    let mut m = mocks();
    let record = refresh_record(Some("client-1"), false);
    m.sessions
        .expect_find_refresh_token()
        .returning(move |_| Ok(Some(record.clone())));
    m.grants
        .expect_find_consent()
        .returning(|_, _| Ok(Some(consent("openid email offline_access"))));
    m.sessions
        .expect_rotate_refresh_token()
        .times(1)
        .returning(|_, _, _| Ok(Rotation::Rotated));
    m.grants.expect_touch_consent().returning(|_, _, _| Ok(()));
    m.provider_tokens
        .expect_issue_client_access()
        .withf(|claims| claims.scopes.to_string() == "openid")
        .returning(|_| Ok("access".into()));
    let core = m.service();
    let set = core
        .client_tokens
        .refresh(&oauth_client(false), "rt", Some("openid"), &from())
        .await
        .unwrap();
    assert_eq!(set.scopes.to_string(), "openid");
    // The presented token was spent: without its successor the grant would be lost.
    assert!(set.refresh_token.is_some());
}

fn access_claims(scopes: &str, session_id: SessionId) -> ClientAccessClaims {
    ClientAccessClaims {
        subject: TokenSubject::User {
            user_id: UserId(7),
            session_id,
        },
        client_id: ClientId("client-1".into()),
        scopes: Scopes::parse(scopes).unwrap(),
        issued_at: now(),
        expires_at: now() + TimeDelta::minutes(15),
        token_id: "jti-1".into(),
    }
}

#[tokio::test]
async fn userinfo_answers_by_scope_for_a_live_grant_only() {
    let sid = SessionId::random();
    for (scopes, grant_client, expected) in [
        ("openid email", Some("client-1"), Ok(())),
        ("email", Some("client-1"), Err("insufficient")),
        ("openid", Some("client-2"), Err("invalid")),
        ("openid", None, Err("invalid")),
    ] {
        let mut m = mocks();
        let claims = access_claims(scopes, sid);
        m.provider_tokens
            .expect_verify_client_access()
            .returning(move |_| Ok(claims.clone()));
        m.grants
            .expect_is_access_token_revoked()
            .returning(|_| Ok(false));
        m.sessions.expect_find_session().returning(move |id| {
            let mut grant = session(id, 7);
            grant.client_id = grant_client.map(|c| ClientId(c.into()));
            Ok(Some((grant, user(7, Role::User, true))))
        });
        let core = m.service();
        let answer = core.client_tokens.userinfo("token").await;
        match (expected, answer) {
            (Ok(()), Ok(info)) => {
                assert_eq!(info.subject, UserId(7));
                assert_eq!(info.email.unwrap().0, "user7@example.com");
                assert_eq!(info.name, None);
            }
            (Err("insufficient"), Err(BearerError::InsufficientScope))
            | (Err("invalid"), Err(BearerError::InvalidToken)) => {}
            (expected, answer) => panic!("{scopes}: expected {expected:?}, got {answer:?}"),
        }
    }
}

#[tokio::test]
async fn a_revoked_access_token_is_refused() {
    let mut m = mocks();
    let claims = access_claims("openid", SessionId::random());
    m.provider_tokens
        .expect_verify_client_access()
        .returning(move |_| Ok(claims.clone()));
    m.grants
        .expect_is_access_token_revoked()
        .with(eq("jti-1"))
        .returning(|_| Ok(true));
    m.sessions.expect_find_session().never();
    let core = m.service();
    assert!(matches!(
        core.client_tokens.userinfo("token").await,
        Err(BearerError::InvalidToken)
    ));
}

#[tokio::test]
async fn revoking_touches_only_the_clients_own_tokens() {
    let mut m = mocks();
    let theirs = refresh_record(Some("client-2"), false);
    m.sessions
        .expect_find_refresh_token()
        .returning(move |_| Ok(Some(theirs.clone())));
    m.sessions.expect_end_session().never();
    let core = m.service();
    core.client_tokens
        .revoke(&oauth_client(false), "their-refresh-token", &from())
        .await
        .unwrap();

    let mut m = mocks();
    m.sessions
        .expect_find_refresh_token()
        .returning(|_| Ok(None));
    let mut other = access_claims("openid", SessionId::random());
    other.client_id = ClientId("client-2".into());
    m.provider_tokens
        .expect_verify_client_access()
        .returning(move |_| Ok(other.clone()));
    m.grants.expect_revoke_access_token().never();
    let core = m.service();
    core.client_tokens
        .revoke(&oauth_client(false), "their-access-token", &from())
        .await
        .unwrap();

    let mut m = mocks();
    let ours = refresh_record(Some("client-1"), false);
    let id = ours.session.id;
    m.sessions
        .expect_find_refresh_token()
        .returning(move |_| Ok(Some(ours.clone())));
    m.sessions
        .expect_end_session()
        .withf(move |_, ended, _, _| *ended == id)
        .times(1)
        .returning(|_, _, _, _| Ok(true));
    let core = m.service();
    core.client_tokens
        .revoke(&oauth_client(false), "our-refresh-token", &from())
        .await
        .unwrap();
}

#[tokio::test]
async fn the_client_credentials_grant_is_for_confidential_clients_that_have_it() {
    let mut m = mocks();
    m.provider_tokens
        .expect_issue_client_access()
        .withf(|claims| claims.subject == TokenSubject::Client && claims.scopes.is_empty())
        .times(1)
        .returning(|_| Ok("machine".into()));
    let core = m.service();
    let mut client = oauth_client(false);
    assert!(matches!(
        core.client_tokens.client_credentials(&client, None).await,
        Err(TokenEndpointError::UnauthorizedClient)
    ));
    client
        .settings
        .grant_types
        .push(GrantType::ClientCredentials);
    assert!(matches!(
        core.client_tokens
            .client_credentials(&client, Some("openid"))
            .await,
        Err(TokenEndpointError::InvalidScope(_))
    ));
    let set = core
        .client_tokens
        .client_credentials(&client, None)
        .await
        .unwrap();
    assert_eq!(set.access_token, "machine");
    assert!(set.id_token.is_none() && set.refresh_token.is_none());
}

#[tokio::test]
async fn a_grant_without_offline_access_ends_with_the_sign_in_it_came_from() {
    let console = SessionId::random();
    let mut m = mocks();
    expect_code(
        &mut m,
        AuthorizationCode {
            scopes: Scopes::parse("openid email").unwrap(),
            ..code(console)
        },
    );
    expect_console_session(&mut m);
    m.sessions
        .expect_create_session()
        .withf(move |new, _| new.origin == Some(console))
        .times(1)
        .returning(|new, _| {
            let mut opened = session(new.id, 7);
            opened.client_id = new.client_id;
            Ok(opened)
        });
    m.grants.expect_spend_code().returning(|_, _, _| Ok(true));
    m.grants.expect_touch_consent().returning(|_, _, _| Ok(()));
    m.provider_tokens
        .expect_issue_client_access()
        .returning(|_| Ok("access".into()));
    m.provider_tokens
        .expect_issue_id_token()
        .returning(|_, _| Ok("id".into()));
    let core = m.service();
    let set = core
        .client_tokens
        .exchange_code(
            &oauth_client(false),
            "the-code",
            "https://wiki.example/cb",
            VERIFIER,
            &from(),
        )
        .await
        .unwrap();
    assert!(set.refresh_token.is_none());
}
