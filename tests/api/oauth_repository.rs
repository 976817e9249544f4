//! The OpenID provider's storage against one contract: in memory, SQLite and PostgreSQL.

use chrono::{DateTime, TimeDelta, Utc};
use portcullis::domain::mfa::AuthMethod;
use portcullis::domain::oauth::{
    AuthorizationCode, ClientId, ClientSecretHash, ClientSettings, CodeHash, Consent, GrantType,
    OAuthClient, Scope, Scopes,
};
use portcullis::domain::{AuditQuery, SessionId, SessionKey, User};
use portcullis::outbound::Store;

use crate::repository::{event, new_session, on_every_store, session, t0, user};

/// A confidential client named `name`, registered at `at`.
fn client(name: &str, at: DateTime<Utc>) -> OAuthClient {
    OAuthClient {
        id: ClientId::random(),
        settings: ClientSettings {
            name: name.into(),
            redirect_uris: vec![
                "https://app.example/cb".into(),
                "https://app.example/other?x=\"1\"".into(),
            ],
            post_logout_redirect_uris: vec!["https://app.example/bye".into()],
            public: false,
            first_party: false,
            scopes: Scopes::all(),
            grant_types: vec![GrantType::AuthorizationCode, GrantType::RefreshToken],
        },
        secret_hash: Some(ClientSecretHash::of(&format!("secret of {name}"))),
        created_at: at,
    }
}

/// Registers a client named `name` at `at`.
pub(crate) async fn registered(repo: &dyn Store, name: &str, at: DateTime<Utc>) -> OAuthClient {
    let client = client(name, at);
    repo.create_client(&client, event()).await.unwrap();
    client
}

/// Opens a session of `user` for `client` at `t0` (idle expiry one day later), with at most
/// `live_limit` live sessions of that client.
async fn client_session(
    repo: &dyn Store,
    user: &User,
    client: &OAuthClient,
    live_limit: u32,
) -> SessionId {
    let (mut new, refresh) = new_session(user, t0(), live_limit);
    new.client_id = Some(client.id.clone());
    let id = new.id;
    repo.create_session(new, SessionKey::RefreshToken(refresh))
        .await
        .unwrap();
    id
}

/// Whether session `id` is stored and live a minute after `t0`.
async fn live(repo: &dyn Store, id: SessionId) -> bool {
    repo.find_session(id)
        .await
        .unwrap()
        .is_some_and(|(session, _)| session.is_live(t0() + TimeDelta::minutes(1)))
}

/// How many audit events are recorded.
async fn recorded(repo: &dyn Store) -> usize {
    repo.list_audit(&AuditQuery {
        limit: 1000,
        ..AuditQuery::default()
    })
    .await
    .unwrap()
    .len()
}

pub(crate) fn consent(
    user: &User,
    client: &OAuthClient,
    scopes: &[Scope],
    at: DateTime<Utc>,
) -> Consent {
    Consent {
        user_id: user.id,
        client_id: client.id.clone(),
        scopes: Scopes::of(scopes.iter().copied()),
        granted_at: at,
        last_used_at: None,
    }
}

/// A code of `user` for `client`, issued at `t0`, valid for `ttl`.
fn code(user: &User, client: &OAuthClient, ttl: TimeDelta) -> AuthorizationCode {
    AuthorizationCode {
        hash: CodeHash::of(&uuid::Uuid::new_v4().to_string()),
        client_id: client.id.clone(),
        user_id: user.id,
        redirect_uri: "https://app.example/cb".into(),
        code_challenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into(),
        nonce: Some("n-0S6_WzA2Mj".into()),
        scopes: Scopes::of([Scope::OpenId, Scope::Email]),
        session_id: SessionId::random(),
        auth_time: t0() - TimeDelta::minutes(5),
        methods: vec![AuthMethod::Password, AuthMethod::Otp],
        created_at: t0(),
        expires_at: t0() + ttl,
        spent_at: None,
        issued_session: None,
    }
}

#[tokio::test]
async fn clients_are_created_found_listed_updated_and_deleted() {
    on_every_store(|repo| async move {
        let before = recorded(repo.as_ref()).await;
        let second = registered(repo.as_ref(), "Second", t0() + TimeDelta::minutes(1)).await;
        let first = registered(repo.as_ref(), "First", t0()).await;
        assert_eq!(recorded(repo.as_ref()).await, before + 2);
        assert_eq!(
            repo.find_client(&first.id).await.unwrap(),
            Some(first.clone())
        );
        assert!(
            repo.find_client(&ClientId::random())
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(
            repo.list_clients().await.unwrap(),
            vec![first.clone(), second.clone()]
        );

        // New settings and no secret: a public client now.
        let changed = OAuthClient {
            settings: ClientSettings {
                name: "First, renamed".into(),
                redirect_uris: vec!["com.example.app:/cb".into()],
                post_logout_redirect_uris: vec![],
                public: true,
                first_party: true,
                scopes: Scopes::of([Scope::OpenId]),
                grant_types: vec![GrantType::AuthorizationCode],
            },
            secret_hash: None,
            ..first.clone()
        };
        assert!(repo.update_client(&changed, event()).await.unwrap());
        assert_eq!(
            repo.find_client(&first.id).await.unwrap(),
            Some(changed.clone())
        );
        // And a secret again, with the settings kept.
        let secret = OAuthClient {
            secret_hash: Some(ClientSecretHash::of("rotated")),
            ..changed.clone()
        };
        assert!(repo.update_client(&secret, event()).await.unwrap());
        assert_eq!(repo.find_client(&first.id).await.unwrap(), Some(secret));
        assert_eq!(recorded(repo.as_ref()).await, before + 4);
        let unknown = client("Unknown", t0());
        assert!(!repo.update_client(&unknown, event()).await.unwrap());
        assert!(repo.find_client(&unknown.id).await.unwrap().is_none());

        assert!(repo.delete_client(&first.id, event()).await.unwrap());
        assert!(repo.find_client(&first.id).await.unwrap().is_none());
        assert_eq!(repo.list_clients().await.unwrap(), vec![second]);
        assert!(!repo.delete_client(&first.id, event()).await.unwrap());
        // Only what changed something was recorded.
        assert_eq!(recorded(repo.as_ref()).await, before + 5);
    })
    .await;
}

#[tokio::test]
async fn deleting_a_client_removes_its_consents_codes_and_sessions() {
    on_every_store(|repo| async move {
        let alice = user(repo.as_ref(), "alice@example.com").await;
        let gone = registered(repo.as_ref(), "Gone", t0()).await;
        let kept = registered(repo.as_ref(), "Kept", t0()).await;
        for client in [&gone, &kept] {
            repo.save_consent(&consent(&alice, client, &[Scope::OpenId], t0()), None)
                .await
                .unwrap();
        }
        let gone_code = code(&alice, &gone, TimeDelta::minutes(1));
        let kept_code = code(&alice, &kept, TimeDelta::minutes(1));
        repo.store_code(&gone_code).await.unwrap();
        repo.store_code(&kept_code).await.unwrap();
        let (mut new, gone_refresh) = new_session(&alice, t0(), 10);
        new.client_id = Some(gone.id.clone());
        let gone_session = new.id;
        repo.create_session(new, SessionKey::RefreshToken(gone_refresh.clone()))
            .await
            .unwrap();
        let kept_session = client_session(repo.as_ref(), &alice, &kept, 10).await;
        let (own, _) = session(repo.as_ref(), &alice).await;

        assert!(repo.delete_client(&gone.id, event()).await.unwrap());
        assert!(!live(repo.as_ref(), gone_session).await);
        assert!(
            repo.find_refresh_token(&gone_refresh.hash)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            repo.find_consent(alice.id, &gone.id)
                .await
                .unwrap()
                .is_none()
        );
        assert!(repo.find_code(&gone_code.hash).await.unwrap().is_none());
        // Everything else stays.
        assert!(live(repo.as_ref(), kept_session).await);
        assert!(live(repo.as_ref(), own).await);
        assert!(
            repo.find_consent(alice.id, &kept.id)
                .await
                .unwrap()
                .is_some()
        );
        assert!(repo.find_code(&kept_code.hash).await.unwrap().is_some());
        let grants = repo.list_consents(alice.id).await.unwrap();
        assert_eq!(grants.len(), 1);
        assert_eq!(grants[0].consent.client_id, kept.id);
    })
    .await;
}

#[tokio::test]
async fn a_consent_is_saved_replaced_touched_listed_and_revoked() {
    on_every_store(|repo| async move {
        let alice = user(repo.as_ref(), "alice@example.com").await;
        let bob = user(repo.as_ref(), "bob@example.com").await;
        let app = registered(repo.as_ref(), "App", t0()).await;
        let other = registered(repo.as_ref(), "Other", t0()).await;
        let before = recorded(repo.as_ref()).await;

        let first = consent(&alice, &app, &[Scope::OpenId], t0());
        repo.save_consent(&first, Some(event())).await.unwrap();
        assert_eq!(
            repo.find_consent(alice.id, &app.id).await.unwrap(),
            Some(first)
        );
        // A wider consent replaces it; re-saving without an event records nothing.
        let wider = consent(
            &alice,
            &app,
            &[Scope::OpenId, Scope::Email],
            t0() + TimeDelta::minutes(2),
        );
        repo.save_consent(&wider, None).await.unwrap();
        assert_eq!(
            repo.find_consent(alice.id, &app.id).await.unwrap(),
            Some(wider.clone())
        );
        assert_eq!(recorded(repo.as_ref()).await, before + 1);
        let used = t0() + TimeDelta::minutes(3);
        repo.touch_consent(alice.id, &app.id, used).await.unwrap();
        let touched = Consent {
            last_used_at: Some(used),
            ..wider
        };
        assert_eq!(
            repo.find_consent(alice.id, &app.id).await.unwrap(),
            Some(touched.clone())
        );
        assert!(repo.find_consent(bob.id, &app.id).await.unwrap().is_none());

        // Listed with the clients' names, the latest granted first.
        let older = consent(&alice, &other, &[Scope::Profile], t0());
        repo.save_consent(&older, None).await.unwrap();
        repo.save_consent(&consent(&bob, &app, &[Scope::OpenId], t0()), None)
            .await
            .unwrap();
        let grants = repo.list_consents(alice.id).await.unwrap();
        let listed: Vec<_> = grants
            .iter()
            .map(|grant| (grant.client_name.as_str(), grant.consent.clone()))
            .collect();
        assert_eq!(listed, vec![("App", touched), ("Other", older)]);

        // Revoking ends Alice's sessions of that client, and none other.
        let revoked = client_session(repo.as_ref(), &alice, &app, 10).await;
        let of_other = client_session(repo.as_ref(), &alice, &other, 10).await;
        let (own, _) = session(repo.as_ref(), &alice).await;
        let bobs = client_session(repo.as_ref(), &bob, &app, 10).await;
        let before = recorded(repo.as_ref()).await;
        let now = t0() + TimeDelta::seconds(30);
        assert!(
            repo.revoke_consent(alice.id, &app.id, now, event())
                .await
                .unwrap()
        );
        assert_eq!(recorded(repo.as_ref()).await, before + 1);
        assert!(
            repo.find_consent(alice.id, &app.id)
                .await
                .unwrap()
                .is_none()
        );
        let (ended, _) = repo.find_session(revoked).await.unwrap().unwrap();
        assert_eq!(ended.ended_at, Some(now));
        for untouched in [of_other, own, bobs] {
            assert!(live(repo.as_ref(), untouched).await);
        }
        assert!(repo.find_consent(bob.id, &app.id).await.unwrap().is_some());
        // Nothing left to revoke: nothing changes, nothing is recorded.
        assert!(
            !repo
                .revoke_consent(alice.id, &app.id, now, event())
                .await
                .unwrap()
        );
        assert_eq!(recorded(repo.as_ref()).await, before + 1);
    })
    .await;
}

#[tokio::test]
async fn a_code_is_found_and_spent_once() {
    on_every_store(|repo| async move {
        let alice = user(repo.as_ref(), "alice@example.com").await;
        let app = registered(repo.as_ref(), "App", t0()).await;
        let stored = code(&alice, &app, TimeDelta::minutes(1));
        repo.store_code(&stored).await.unwrap();
        assert_eq!(
            repo.find_code(&stored.hash).await.unwrap(),
            Some(stored.clone())
        );
        assert!(
            repo.find_code(&CodeHash::of("never issued"))
                .await
                .unwrap()
                .is_none()
        );
        let (issued, again) = (SessionId::random(), SessionId::random());
        let now = t0() + TimeDelta::seconds(10);
        assert!(repo.spend_code(&stored.hash, issued, now).await.unwrap());
        assert!(
            !repo
                .spend_code(&stored.hash, again, now + TimeDelta::seconds(1))
                .await
                .unwrap()
        );
        assert!(
            !repo
                .spend_code(&CodeHash::of("never issued"), again, now)
                .await
                .unwrap()
        );
        let spent = repo.find_code(&stored.hash).await.unwrap().unwrap();
        assert_eq!(spent.spent_at, Some(now));
        assert_eq!(spent.issued_session, Some(issued));
    })
    .await;
}

#[tokio::test]
async fn codes_and_revoked_tokens_are_purged_at_their_end() {
    on_every_store(|repo| async move {
        let alice = user(repo.as_ref(), "alice@example.com").await;
        let app = registered(repo.as_ref(), "App", t0()).await;
        let short = code(&alice, &app, TimeDelta::minutes(1));
        let long = code(&alice, &app, TimeDelta::minutes(10));
        repo.store_code(&short).await.unwrap();
        repo.store_code(&long).await.unwrap();
        let ends = t0() + TimeDelta::minutes(5);
        repo.revoke_access_token("jti-1", ends).await.unwrap();
        // Revoked twice is revoked.
        repo.revoke_access_token("jti-1", ends).await.unwrap();
        assert!(repo.is_access_token_revoked("jti-1").await.unwrap());
        assert!(!repo.is_access_token_revoked("jti-2").await.unwrap());

        let audit_before = t0() - TimeDelta::days(1000);
        repo.purge_expired(t0() + TimeDelta::minutes(2), audit_before)
            .await
            .unwrap();
        assert!(repo.find_code(&short.hash).await.unwrap().is_none());
        assert!(repo.find_code(&long.hash).await.unwrap().is_some());
        assert!(repo.is_access_token_revoked("jti-1").await.unwrap());
        repo.purge_expired(ends, audit_before).await.unwrap();
        assert!(!repo.is_access_token_revoked("jti-1").await.unwrap());
    })
    .await;
}

#[tokio::test]
async fn a_clients_sessions_are_capped_and_listed_apart_from_the_users_own() {
    on_every_store(|repo| async move {
        let alice = user(repo.as_ref(), "alice@example.com").await;
        let app = registered(repo.as_ref(), "App", t0()).await;
        let of_app = client_session(repo.as_ref(), &alice, &app, 1).await;
        let mut own = Vec::new();
        for second in 0..2 {
            let (new, refresh) = new_session(&alice, t0() + TimeDelta::seconds(second), 1);
            own.push(new.id);
            repo.create_session(new, SessionKey::RefreshToken(refresh))
                .await
                .unwrap();
        }
        // One own session at most: the older one ended, the client's session stays.
        assert!(!live(repo.as_ref(), own[0]).await);
        assert!(live(repo.as_ref(), own[1]).await);
        assert!(live(repo.as_ref(), of_app).await);
        let listed: Vec<SessionId> = repo
            .list_live_sessions(alice.id, t0() + TimeDelta::minutes(1), 100)
            .await
            .unwrap()
            .into_iter()
            .map(|session| session.id)
            .collect();
        assert_eq!(listed, vec![own[1]]);
        // A second session of the client, at most one: the client's first ends, the own stays.
        let (mut new, refresh) = new_session(&alice, t0() + TimeDelta::seconds(5), 1);
        new.client_id = Some(app.id.clone());
        let again = new.id;
        let opened = repo
            .create_session(new, SessionKey::RefreshToken(refresh.clone()))
            .await
            .unwrap();
        assert_eq!(opened.client_id, Some(app.id.clone()));
        assert!(!live(repo.as_ref(), of_app).await);
        assert!(live(repo.as_ref(), again).await);
        assert!(live(repo.as_ref(), own[1]).await);
        // Read back wherever a session is found.
        let (found, _) = repo.find_session(again).await.unwrap().unwrap();
        assert_eq!(found.client_id, Some(app.id.clone()));
        let record = repo.find_refresh_token(&refresh.hash).await.unwrap();
        assert_eq!(record.unwrap().session.client_id, Some(app.id));
    })
    .await;
}
