use super::super::test_support::{Mocks, oauth_client};
use super::*;
use crate::domain::oauth::{GrantType, Scopes};

fn settings(public: bool) -> ClientSettings {
    ClientSettings {
        name: "Grafana".into(),
        redirect_uris: vec!["https://grafana.example/login/generic_oauth".into()],
        post_logout_redirect_uris: Vec::new(),
        public,
        first_party: false,
        scopes: Scopes::all(),
        grant_types: vec![GrantType::AuthorizationCode, GrantType::RefreshToken],
    }
}

#[tokio::test]
async fn a_confidential_client_gets_a_secret_shown_once_and_stored_as_its_hash() {
    let mut m = Mocks::new();
    m.clients
        .expect_create_client()
        .withf(|client, audit| {
            client.secret_hash.is_some()
                && audit.kind == AuditKind::ClientCreated
                && audit.detail.get("client_id") == Some(&client.id.to_string())
        })
        .times(1)
        .returning(|_, _| Ok(()));
    let core = m.service();
    let made = core
        .clients
        .create(settings(false), Actor::Operator)
        .await
        .unwrap();
    let secret = made.secret.unwrap();
    assert!(made.client.secret_hash.unwrap().matches(&secret));
    assert_eq!(made.client.id.as_str().len(), 22);
}

#[tokio::test]
async fn a_public_client_has_no_secret_and_a_bad_redirect_uri_stores_nothing() {
    let mut m = Mocks::new();
    m.clients
        .expect_create_client()
        .withf(|client, _| client.secret_hash.is_none())
        .times(1)
        .returning(|_, _| Ok(()));
    let core = m.service();
    let made = core
        .clients
        .create(settings(true), Actor::Operator)
        .await
        .unwrap();
    assert!(made.secret.is_none());
    let bad = ClientSettings {
        redirect_uris: vec!["http://grafana.example/cb".into()],
        ..settings(false)
    };
    let err = core.clients.create(bad, Actor::Operator).await.unwrap_err();
    let ClientError::Invalid(invalid) = err else {
        panic!("{err:?}");
    };
    assert_eq!(invalid.field, "redirect_uris");
    assert!(invalid.message.contains("http://grafana.example/cb"));
}

#[tokio::test]
async fn rotating_replaces_the_secret_and_a_public_client_has_none_to_rotate() {
    let mut m = Mocks::new();
    m.clients
        .expect_find_client()
        .returning(|id| Ok(Some(oauth_client(id.as_str() == "public"))));
    m.clients
        .expect_update_client()
        .withf(|client, audit| {
            !client.secret_hash.as_ref().unwrap().matches("secret")
                && audit.kind == AuditKind::ClientSecretRotated
        })
        .times(1)
        .returning(|_, _| Ok(true));
    let core = m.service();
    let rotated = core
        .clients
        .rotate_secret(&ClientId("client-1".into()), Actor::Operator)
        .await
        .unwrap();
    assert!(rotated.secret.is_some());
    assert!(matches!(
        core.clients
            .rotate_secret(&ClientId("public".into()), Actor::Operator)
            .await,
        Err(ClientError::Invalid(_))
    ));
}

#[tokio::test]
async fn a_client_made_public_loses_its_secret() {
    let mut m = Mocks::new();
    m.clients
        .expect_find_client()
        .returning(|_| Ok(Some(oauth_client(false))));
    m.clients
        .expect_update_client()
        .withf(|client, _| client.settings.public && client.secret_hash.is_none())
        .times(1)
        .returning(|_, _| Ok(true));
    let core = m.service();
    let changed = core
        .clients
        .update(
            &ClientId("client-1".into()),
            |settings| ClientSettings {
                public: true,
                ..settings
            },
            Actor::Operator,
        )
        .await
        .unwrap();
    assert!(changed.secret.is_none());
}

#[tokio::test]
async fn deleting_an_unknown_client_is_not_found() {
    let mut m = Mocks::new();
    m.clients.expect_find_client().returning(|_| Ok(None));
    m.clients.expect_delete_client().never();
    let core = m.service();
    assert!(matches!(
        core.clients
            .delete(&ClientId("nobody".into()), Actor::Operator)
            .await,
        Err(ClientError::NotFound)
    ));
}
