//! Graceful overload: a full hash queue and a database outage answer 503 at once, and the
//! service recovers by itself.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::cable::Cable;
use crate::helpers::{Backend, PASSWORD, TestApp, TestDb, app_test, assert_problem, settings};

app_test!(
    a_full_hash_queue_answers_503_at_once_and_token_requests_still_pass,
    json!({"hash_workers": 1, "hash_queue": 1, "bcrypt_cost": 10}),
    |app| {
        let token = app.token_for("steady@example.com").await;
        let logins = (0..8).map(|_| app.login("steady@example.com", PASSWORD));
        let during = app.get_auth("/protected/user", &token);
        let (results, during) = tokio::join!(futures::future::join_all(logins), during);
        assert_eq!(during.status(), 200);
        let mut busy = 0;
        for response in results {
            match response.status().as_u16() {
                200 => {}
                503 => {
                    assert_eq!(response.headers()["retry-after"], "1");
                    assert_problem(response, 503, "Server busy, retry shortly").await;
                    busy += 1;
                }
                // Eight logins into one account at once: an attempt that loses every
                // compare-and-swap of the account's failure run is told to wait (issue 7's
                // atomic admission), which a slow machine makes likelier.
                429 => assert!(response.headers().contains_key("retry-after")),
                other => panic!("unexpected {other}"),
            }
        }
        assert!(
            busy >= 1,
            "eight logins on one worker and one queue slot: some must be refused"
        );
        // The queue drains and logins work again.
        assert_eq!(
            app.login("steady@example.com", PASSWORD).await.status(),
            200
        );
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_gives_fast_503s_and_the_service_recovers_by_itself() {
    let Some(db) = TestDb::create(Backend::Postgres).await else {
        return;
    };
    let (mut cable, via_cable) = Cable::in_front_of(db.url()).await;
    // The session cache would answer the token's check from memory only while its listening
    // connection (through the same cable) is up; this test is about the pool's outage, and the
    // listener's has a test of its own (tests/api/session_cache.rs).
    let mut app = TestApp::spawn(settings(
        &via_cable,
        json!({"database_timeout_seconds": 2, "session_cache": false}),
    ))
    .await;
    let token = app.token_for("outage@example.com").await;

    cable.cut();
    for path in ["/ready", "/protected/user"] {
        let started = Instant::now();
        let response = app.get_auth(path, &token).await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{path} took {:?}",
            started.elapsed()
        );
        assert!(response.headers().contains_key("retry-after"), "{path}");
        assert_problem(response, 503, "Service temporarily unavailable").await;
    }
    let started = Instant::now();
    let login = app.login("outage@example.com", PASSWORD).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_problem(login, 503, "").await;
    // Liveness does not depend on the database.
    assert_eq!(
        app.client
            .get(app.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    cable.restore().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = app.client.get(app.url("/ready")).send().await.unwrap();
        if ready.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the service did not recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(app.get_auth("/protected/user", &token).await.status(), 200);
    assert_eq!(
        app.login("outage@example.com", PASSWORD).await.status(),
        200
    );
    app.stop().await;
    cable.cut();
    db.drop_database().await;
}
