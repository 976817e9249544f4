//! The session cache (issue 14): repeated checks are answered from memory, and every change
//! that ends a session or changes a user is honoured at once by the instance that made it,
//! within milliseconds by every other instance and after the CLI, and by an instance whose
//! listening connection is down.

use portcullis::domain::ports::{GrantRepository, SessionRepository};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use portcullis::domain::oauth::{ClientId, Scope};
use portcullis::domain::{
    AccountChange, Condition, Edit, Email, LinkTokenKind, NewLinkToken, PasswordHash, Role,
    SessionId, SessionKey, User, UserChanges,
};
use portcullis::outbound::Store;
use portcullis::outbound::sea_orm::{SeaOrmStore, invalidations, migrate_up};
use portcullis::outbound::session_cache::{CacheLimits, CachedSessions, SessionCache};
use serde_json::{Value, json};

use crate::cable::Cable;
use crate::helpers::{
    Backend, PASSWORD, TestApp, TestDb, access_token, app_test, assert_unauthorized, metric,
    refresh_token, run_cli, settings, status_within,
};
use crate::oauth_repository::{consent, registered};
use crate::repository::{event, new_session, user};

/// Far above the delays measured (a few milliseconds, see `cargo bench --bench revocation`),
/// so that a slow CI machine does not fail the test, and far below a token's lifetime.
const PROPAGATION: Duration = Duration::from_secs(2);

/// Checks `token` on `app` until one check is answered from the cache. The login's own
/// announcement (its last-login time) may reach another instance after its first check, and
/// void what that check stored; the next one stores it for good.
async fn cached(app: &TestApp, token: &str, path: &str) {
    let before = app.cache_stats().hits;
    for _ in 0..10 {
        assert_eq!(app.get_auth(path, token).await.status(), 200, "{path}");
        if app.cache_stats().hits > before {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no check of {path} was answered from the cache");
}

async fn user_id(app: &TestApp, token: &str) -> i64 {
    let me: Value = app.get_auth("/auth/me", token).await.json().await.unwrap();
    me["id"].as_i64().expect("an id")
}

app_test!(a_checked_session_is_answered_from_memory, |app| {
    app.cache_trusted(true).await;
    let token = app.token_for("cached@example.com").await;
    cached(&app, &token, "/protected/user").await;
    let stats = app.cache_stats();
    assert!(stats.misses >= 1 && stats.entries >= 1 && stats.bytes >= stats.entries * 300);
    assert!(stats.since_confirmed.unwrap() < Duration::from_secs(5));
    // One registry per process, shared by the tests' instances: the series are there, and the
    // counters are at least this instance's.
    for (series, at_least) in [
        (
            r#"portcullis_session_cache_lookups_total{outcome="hit"}"#,
            stats.hits,
        ),
        (
            r#"portcullis_session_cache_lookups_total{outcome="miss"}"#,
            stats.misses,
        ),
        ("portcullis_session_cache_invalidations_received_total", 0),
    ] {
        let value = metric(&app, series).await.expect(series);
        assert!(value >= at_least as f64, "{series}: {value}");
    }
    for series in [
        "portcullis_session_cache_entries",
        "portcullis_session_cache_bytes",
        "portcullis_session_cache_trusted",
        "portcullis_session_cache_feed_confirmed_seconds_ago",
    ] {
        assert!(metric(&app, series).await.is_some(), "{series}");
    }
});

app_test!(
    session_cache_false_checks_the_database_every_time,
    json!({"session_cache": false}),
    |app| {
        let token = app.token_for("uncached@example.com").await;
        assert_eq!(app.get_auth("/protected/user", &token).await.status(), 200);
        assert_eq!(app.get_auth("/protected/user", &token).await.status(), 200);
        assert!(app.cache.is_none());
    }
);

app_test!(
    every_revocation_made_on_one_instance_is_honoured_by_the_other,
    json!({"login_limit_per_account": 100}),
    |app| {
        let mut other = TestApp::spawn(app.settings.clone()).await;
        app.cache_trusted(true).await;
        other.cache_trusted(true).await;
        let admin = app.admin_token("root@example.com").await;
        let admin_call = |method: reqwest::Method, path: String, body: Value| {
            app.client
                .request(method, app.url(&path))
                .bearer_auth(&admin)
                .json(&body)
                .send()
        };
        let mut delays = Vec::new();

        // Logout (and a session deleted by its owner: the same write).
        let token = app.token_for("logout@example.com").await;
        cached(&other, &token, "/protected/user").await;
        let logout = app.logout(&token).await;
        assert_eq!(logout.status(), 204);
        delays.push(status_within(&other, "/protected/user", &token, 401, PROPAGATION).await);

        // Refresh-token reuse ends the session.
        let tokens = app.signed_up("reuse@example.com").await;
        let token = access_token(&tokens);
        cached(&other, &token, "/protected/user").await;
        for expected in [200, 401] {
            let refreshed = app
                .post_json(
                    "/auth/refresh",
                    &json!({"refresh_token": refresh_token(&tokens)}),
                )
                .await;
            assert_eq!(refreshed.status(), expected);
        }
        delays.push(status_within(&other, "/protected/user", &token, 401, PROPAGATION).await);

        // A password change ends the other sessions.
        let kept = app.token_for("changer@example.com").await;
        let token = app.token_for_existing("changer@example.com").await;
        cached(&other, &token, "/protected/user").await;
        let changed = app
            .client
            .post(app.url("/auth/password"))
            .bearer_auth(&kept)
            .json(&json!({"current_password": PASSWORD, "new_password": "an0ther-Long-passphrase"}))
            .send()
            .await
            .unwrap();
        assert_eq!(changed.status(), 204);
        delays.push(status_within(&other, "/protected/user", &token, 401, PROPAGATION).await);
        assert_eq!(other.get_auth("/protected/user", &kept).await.status(), 200);

        // A role change, both ways, then a deactivation.
        let token = app.token_for("flip@example.com").await;
        let id = user_id(&app, &token).await;
        cached(&other, &token, "/protected/user").await;
        assert_eq!(
            other.get_auth("/protected/admin", &token).await.status(),
            403
        );
        let patch =
            |id: i64, body| admin_call(reqwest::Method::PATCH, format!("/admin/users/{id}"), body);
        assert_eq!(
            patch(id, json!({"role": "admin"})).await.unwrap().status(),
            200
        );
        delays.push(status_within(&other, "/protected/admin", &token, 200, PROPAGATION).await);
        assert_eq!(
            patch(id, json!({"role": "user"})).await.unwrap().status(),
            200
        );
        delays.push(status_within(&other, "/protected/admin", &token, 403, PROPAGATION).await);
        assert_eq!(
            patch(id, json!({"is_active": false}))
                .await
                .unwrap()
                .status(),
            200
        );
        delays.push(status_within(&other, "/protected/user", &token, 401, PROPAGATION).await);

        // An admin ends every session of a user; an admin deletes a user.
        for (email, path) in [
            ("ended@example.com", "/sessions"),
            ("deleted@example.com", ""),
        ] {
            let token = app.token_for(email).await;
            let id = user_id(&app, &token).await;
            cached(&other, &token, "/protected/user").await;
            let path = format!("/admin/users/{id}{path}");
            let done = admin_call(reqwest::Method::DELETE, path, json!({}))
                .await
                .unwrap();
            assert_eq!(done.status(), 204, "{email}");
            delays.push(status_within(&other, "/protected/user", &token, 401, PROPAGATION).await);
        }

        // A password reset ends every session; an address marked verified shows at once.
        let token = app.token_for("reset@example.com").await;
        cached(&other, &token, "/auth/me").await;
        let email = Email::parse("reset@example.com").unwrap();
        let operator = app.operator().await;
        let link = operator.recovery.reset_link(&email).await.unwrap();
        let reset_token = link.rsplit_once("token=").expect("a token in the link").1;
        let reset = app
            .post_json(
                "/auth/password/reset",
                &json!({"token": reset_token, "new_password": "an0ther-Long-passphrase"}),
            )
            .await;
        assert_eq!(reset.status(), 204);
        delays.push(status_within(&other, "/auth/me", &token, 401, PROPAGATION).await);

        let token = app.token_for("verified@example.com").await;
        let id = user_id(&app, &token).await;
        cached(&other, &token, "/auth/me").await;
        let verified = patch(id, json!({"email_verified": true})).await.unwrap();
        assert_eq!(
            verified.status(),
            200,
            "the admin marks the address verified"
        );
        let started = std::time::Instant::now();
        loop {
            let me: Value = other
                .get_auth("/auth/me", &token)
                .await
                .json()
                .await
                .unwrap();
            if me["email_verified"] == true {
                break;
            }
            assert!(
                started.elapsed() < PROPAGATION,
                "the verification did not show"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        delays.push(started.elapsed());

        eprintln!("revocation delays on the other instance: {delays:?}");
        other.stop().await;
    }
);

app_test!(
    a_change_made_here_applies_to_the_very_next_request_here,
    |app| {
        let admin = app.admin_token("root@example.com").await;
        let token = app.token_for("here@example.com").await;
        let id = user_id(&app, &token).await;
        cached(&app, &token, "/protected/user").await;
        let deactivated = app
            .client
            .patch(app.url(&format!("/admin/users/{id}")))
            .bearer_auth(&admin)
            .json(&json!({"is_active": false}))
            .send()
            .await
            .unwrap();
        assert_eq!(deactivated.status(), 200);
        // No waiting: the instance that made the change forgot the old state before answering.
        assert_unauthorized(app.get_auth("/protected/user", &token).await, "").await;
    }
);

// The CLI is another process on the same database: on PostgreSQL its changes notify like any
// other; on SQLite they reach the server through the invalidation log it reads.
app_test!(
    a_deactivation_from_the_command_line_reaches_a_running_server,
    |app| {
        let token = app.token_for("cli@example.com").await;
        cached(&app, &token, "/protected/user").await;
        let output = run_cli(
            app.settings.database_url(),
            &[],
            &["user", "deactivate", "cli@example.com"],
            "",
        );
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let delay = status_within(&app, "/protected/user", &token, 401, PROPAGATION).await;
        eprintln!("the CLI's deactivation reached the server in {delay:?}");
    }
);

/// Two instances on one PostgreSQL database: a writer, and a reader whose listening connection
/// alone goes through a cable (its pool does not); `None` without PostgreSQL.
struct Cabled {
    db: TestDb,
    cable: Cable,
    writer: TestApp,
    reader: TestApp,
}

impl Cabled {
    async fn start() -> Option<Self> {
        let db = TestDb::create(Backend::Postgres).await?;
        let (cable, via_cable) = Cable::in_front_of(db.url()).await;
        let writer = TestApp::spawn(settings(db.url(), json!({}))).await;
        let reader = TestApp::spawn(settings(
            db.url(),
            json!({"session_cache_listen_url": via_cable, "database_timeout_seconds": 2}),
        ))
        .await;
        reader.cache_trusted(true).await;
        Some(Self {
            db,
            cable,
            writer,
            reader,
        })
    }

    async fn stop(mut self) {
        self.reader.stop().await;
        self.writer.stop().await;
        self.cable.cut();
        self.db.drop_database().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_made_while_the_listener_is_down_are_honoured_by_that_instance() {
    let Some(mut pair) = Cabled::start().await else {
        return;
    };
    let (writer, reader) = (&pair.writer, &pair.reader);
    let revoked = writer.token_for("revoked@example.com").await;
    let kept = writer.token_for("kept@example.com").await;
    cached(reader, &revoked, "/protected/user").await;
    cached(reader, &kept, "/protected/user").await;

    pair.cable.cut();
    reader.cache_trusted(false).await;
    let logout = writer.logout(&revoked).await;
    assert_eq!(logout.status(), 204);
    // Down, the cache is not used: the very next check reads the database.
    assert_unauthorized(reader.get_auth("/protected/user", &revoked).await, "").await;
    let before = reader.cache_stats();
    assert_eq!(
        reader.get_auth("/protected/user", &kept).await.status(),
        200
    );
    let after = reader.cache_stats();
    assert_eq!(after.hits, before.hits, "no check is answered from memory");
    assert_eq!(after.bypassed, before.bypassed + 1);
    assert_eq!(after.entries, 0);

    // Back, it starts empty: nothing cached before the outage survives it.
    pair.cable.restore().await;
    reader.cache_trusted(true).await;
    assert_unauthorized(reader.get_auth("/protected/user", &revoked).await, "").await;
    cached(reader, &kept, "/protected/user").await;
    let logout = writer.logout(&kept).await;
    assert_eq!(logout.status(), 204);
    status_within(reader, "/protected/user", &kept, 401, PROPAGATION).await;

    pair.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listening_connection_that_falls_silent_is_taken_as_lost() {
    let Some(pair) = Cabled::start().await else {
        return;
    };
    let (writer, reader) = (&pair.writer, &pair.reader);
    let token = writer.token_for("frozen@example.com").await;
    cached(reader, &token, "/protected/user").await;

    // A proxy that stops passing anything but closes nothing: no error ever reaches the
    // listener. Its pings stop coming back, and within seconds the cache is no longer used.
    pair.cable.freeze();
    let frozen = Instant::now();
    reader.cache_trusted(false).await;
    let noticed = frozen.elapsed();
    assert!(
        noticed >= Duration::from_secs(2),
        "noticed after {noticed:?}"
    );
    assert_eq!(writer.logout(&token).await.status(), 204);
    assert_unauthorized(reader.get_auth("/protected/user", &token).await, "").await;

    pair.cable.thaw();
    reader.cache_trusted(true).await;
    assert_unauthorized(reader.get_auth("/protected/user", &token).await, "").await;
    eprintln!("a silent listening connection was noticed after {noticed:?}");
    pair.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_behind_a_slow_database_is_not_trusted() {
    let Some(db) = TestDb::create(Backend::Postgres).await else {
        return;
    };
    // The reader's pool and listening connection both go through the cable.
    let (mut cable, via_cable) = Cable::in_front_of(db.url()).await;
    let mut writer = TestApp::spawn(settings(db.url(), json!({}))).await;
    let mut reader =
        TestApp::spawn(settings(&via_cable, json!({"database_timeout_seconds": 2}))).await;
    reader.cache_trusted(true).await;
    let token = writer.token_for("slow@example.com").await;
    cached(&reader, &token, "/protected/user").await;

    // Slower than the timeout: the feed's pings cannot even be sent, so nothing shows that the
    // announcements still arrive in time, and the cache stops answering.
    cable.set_latency(Duration::from_secs(4));
    let slowed = Instant::now();
    reader.cache_trusted(false).await;
    eprintln!(
        "a feed behind a slow database was distrusted after {:?}",
        slowed.elapsed()
    );
    assert_eq!(writer.logout(&token).await.status(), 204);
    let status = reader.get_auth("/protected/user", &token).await.status();
    assert_ne!(status, 200, "an ended session passed while the feed lagged");

    cable.set_latency(Duration::ZERO);
    reader.cache_trusted(true).await;
    assert_unauthorized(reader.get_auth("/protected/user", &token).await, "").await;
    reader.stop().await;
    writer.stop().await;
    cable.cut();
    db.drop_database().await;
}

// The adapter level: every write of the repository, made by another process's repository (no
// cache of its own), reaches a cached repository through the database's triggers and the feed.

/// A write to one user's account, made by `writer` on `user`, whose session is `session`.
type Write = for<'a> fn(&'a dyn Store, &'a User, SessionId) -> futures::future::BoxFuture<'a, ()>;

fn token_of(kind: LinkTokenKind, user: &User) -> NewLinkToken {
    NewLinkToken::generate(kind, user, Utc::now(), TimeDelta::hours(1))
}

/// Applies `change`, which must be kept.
async fn applies(writer: &dyn Store, change: AccountChange) {
    let applied = writer.apply(change).await.unwrap();
    assert!(applied.kept(), "{applied:?}");
}

fn every_write() -> Vec<(&'static str, Write)> {
    vec![
        (
            "end_session (logout, session delete, refresh reuse)",
            |w, u, s| {
                Box::pin(async move {
                    assert!(w.end_session(u.id, s, Utc::now(), event()).await.unwrap());
                })
            },
        ),
        ("role change", |w, u, _| {
            Box::pin(async move {
                let changes = UserChanges {
                    role: Some(Role::Admin),
                    ..UserChanges::default()
                };
                applies(w, AccountChange::update(u.id, Utc::now(), changes)).await;
            })
        }),
        ("deactivation", |w, u, _| {
            Box::pin(async move {
                let changes = UserChanges {
                    is_active: Some(false),
                    ..UserChanges::default()
                };
                applies(w, AccountChange::update(u.id, Utc::now(), changes)).await;
            })
        }),
        ("deletion", |w, u, _| {
            Box::pin(async move {
                w.apply(AccountChange::of(u.id, Utc::now()).then(Edit::Delete))
                    .await
                    .unwrap();
            })
        }),
        ("an admin ends every session", |w, u, _| {
            Box::pin(async move {
                let change =
                    AccountChange::of(u.id, Utc::now()).then(Edit::EndSessions { keep: None });
                applies(w, change).await;
            })
        }),
        ("password change", |w, u, _| {
            Box::pin(async move {
                let hash = PasswordHash::new("changed".into());
                applies(
                    w,
                    AccountChange::of(u.id, Utc::now()).new_password(hash, None),
                )
                .await;
            })
        }),
        ("rehash", |w, u, _| {
            Box::pin(async move {
                let hash = PasswordHash::new("rehashed".into());
                let change = AccountChange::of(u.id, Utc::now())
                    .when(Condition::PasswordHashIs(u.password_hash.clone()))
                    .then(Edit::SetPasswordHash(hash));
                applies(w, change).await;
            })
        }),
        ("create_session beyond the session limit", |w, u, _| {
            Box::pin(async move {
                let (new, refresh) = new_session(u, Utc::now() + TimeDelta::seconds(1), 1);
                w.create_session(new, SessionKey::RefreshToken(refresh))
                    .await
                    .unwrap();
            })
        }),
        ("reset", |w, u, _| {
            Box::pin(async move {
                let token = token_of(LinkTokenKind::PasswordReset, u);
                w.store_email_token(token.clone(), None).await.unwrap();
                let hash = PasswordHash::new("reset".into());
                let change = AccountChange::of(u.id, Utc::now())
                    .when(Condition::SpendsToken(token.hash))
                    .new_password(hash, None)
                    .then(Edit::SetEmailVerified(true));
                applies(w, change).await;
            })
        }),
        ("verification", |w, u, _| {
            Box::pin(async move {
                let token = token_of(LinkTokenKind::Verification, u);
                w.store_email_token(token.clone(), None).await.unwrap();
                let change = AccountChange::of(u.id, Utc::now())
                    .when(Condition::SpendsToken(token.hash))
                    .then(Edit::SetEmailVerified(true));
                applies(w, change).await;
            })
        }),
        ("email change", |w, u, _| {
            Box::pin(async move {
                let to = Email::parse("moved@example.com").unwrap();
                let change = AccountChange::of(u.id, Utc::now())
                    .then(Edit::SetEmail(to))
                    .then(Edit::BumpCredentialVersion)
                    .then(Edit::EndSessions { keep: None });
                applies(w, change).await;
            })
        }),
    ]
}

/// The OpenID client session `session` was opened for.
async fn client_of(writer: &dyn Store, session: SessionId) -> ClientId {
    let (session, _) = writer.find_session(session).await.unwrap().unwrap();
    session.client_id.expect("a client's session")
}

/// The writes that end a user's sessions of an OpenID client.
fn every_client_write() -> Vec<(&'static str, Write)> {
    vec![
        ("a consent revoked", |w, u, s| {
            Box::pin(async move {
                let client = client_of(w, s).await;
                assert!(
                    w.revoke_consent(u.id, &client, Utc::now(), event())
                        .await
                        .unwrap()
                );
            })
        }),
        ("a client deleted", |w, _, s| {
            Box::pin(async move {
                let client = client_of(w, s).await;
                assert!(w.delete_client(&client, event()).await.unwrap());
            })
        }),
    ]
}

async fn every_write_reaches_a_cached_repository(backend: Backend) {
    let Some(db) = TestDb::create(backend).await else {
        return;
    };
    let conn = db.pool(5).await;
    migrate_up(&conn).await.unwrap();
    let stored = Arc::new(SeaOrmStore::new(conn.clone(), Duration::from_secs(5), 1));
    let cache = Arc::new(SessionCache::new(
        CacheLimits {
            max_entries: 1000,
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(300),
        },
        false,
    ));
    let feed = tokio::spawn(invalidations::feed(
        conn.clone(),
        db.url().to_owned(),
        invalidations::Listeners {
            cache: Some(Arc::clone(&cache)),
            keys_changed: Arc::default(),
        },
        Duration::from_secs(5),
    ));
    let cached = CachedSessions::new(stored.clone(), stored.clone(), Arc::clone(&cache));
    let started = Instant::now();
    while !cache.stats().trusted {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the feed did not connect"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The writer: another repository on its own pool, as another instance or the CLI has.
    let writer_conn = db.pool(2).await;
    let writer = SeaOrmStore::new(writer_conn.clone(), Duration::from_secs(5), 1);

    // Each write with whether its session must be a client's, opened on the user's consent.
    let writes = every_write()
        .into_iter()
        .map(|write| (write, false))
        .chain(every_client_write().into_iter().map(|write| (write, true)));
    for (n, ((name, write), for_client)) in writes.enumerate() {
        let owner = user(&writer, &format!("writer{n}@example.com")).await;
        let (mut new, refresh) = new_session(&owner, Utc::now(), 100);
        if for_client {
            let client = registered(&writer, &format!("Client {n}"), Utc::now()).await;
            let granted = consent(&owner, &client, &[Scope::OpenId], Utc::now());
            writer.save_consent(&granted, None).await.unwrap();
            new.client_id = Some(client.id);
        }
        let id = new.id;
        writer
            .create_session(new, SessionKey::RefreshToken(refresh))
            .await
            .unwrap();
        // Checked until a check is a hit (the session's own creation is announced too).
        let started = Instant::now();
        let before = loop {
            let hits = cache.stats().hits;
            let found = cached.find_session(id).await.unwrap();
            if cache.stats().hits > hits {
                break found;
            }
            assert!(started.elapsed() < PROPAGATION, "{name}: never cached");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        write(&writer, &owner, id).await;
        let now = stored.find_session(id).await.unwrap();
        assert_ne!(
            now, before,
            "{name}: the write changes what the check reads"
        );
        let started = Instant::now();
        while cached.find_session(id).await.unwrap() != now {
            assert!(
                started.elapsed() < PROPAGATION,
                "{name}: the cached check still answers the old state"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    feed.abort();
    writer_conn.close().await.unwrap();
    conn.close().await.unwrap();
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_repository_write_reaches_a_cached_repository_on_sqlite() {
    every_write_reaches_a_cached_repository(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_repository_write_reaches_a_cached_repository_on_postgres() {
    every_write_reaches_a_cached_repository(Backend::Postgres).await;
}

/// Hammers `path` on `app` with `token` until `stop`; counts the answers 200 to requests sent
/// after `refused` was set.
async fn hammer(
    app: &TestApp,
    token: &str,
    refused: &std::sync::atomic::AtomicBool,
    stop: &std::sync::atomic::AtomicBool,
) -> usize {
    use std::sync::atomic::Ordering::SeqCst;
    let mut late_yes = 0;
    while !stop.load(SeqCst) {
        let sent_after_refusal = refused.load(SeqCst);
        match app
            .get_auth("/protected/user", token)
            .await
            .status()
            .as_u16()
        {
            200 if sent_after_refusal => late_yes += 1,
            401 => refused.store(true, SeqCst),
            _ => {}
        }
    }
    late_yes
}

app_test!(
    checks_racing_a_logout_never_see_the_session_again_once_refused,
    |app| {
        use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
        let mut other = TestApp::spawn(app.settings.clone()).await;
        other.cache_trusted(true).await;
        let token = app.token_for("raced@example.com").await;
        cached(&other, &token, "/protected/user").await;
        cached(&app, &token, "/protected/user").await;
        // Here: set when the logout has answered; there: set by the first refusal seen.
        let (refused_here, refused_there, stop) = (
            AtomicBool::new(false),
            AtomicBool::new(false),
            AtomicBool::new(false),
        );
        let checkers = futures::future::join_all((0..8).map(|n| {
            let (target, refused) = if n % 2 == 0 {
                (&app, &refused_here)
            } else {
                (&other, &refused_there)
            };
            hammer(target, &token, refused, &stop)
        }));
        let logout = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(app.logout(&token).await.status(), 204);
            refused_here.store(true, SeqCst);
            tokio::time::sleep(Duration::from_millis(300)).await;
            stop.store(true, SeqCst);
        };
        let (late, ()) = tokio::join!(checkers, logout);
        assert!(
            refused_there.load(SeqCst),
            "the other instance never refused"
        );
        assert_eq!(
            late.iter().sum::<usize>(),
            0,
            "a check sent after the refusal was let through: {late:?}"
        );
        other.stop().await;
    }
);
