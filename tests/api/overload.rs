//! Graceful overload: a full hash queue and a database outage answer 503 at once, and the
//! service recovers by itself.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

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

/// A TCP forwarder to PostgreSQL that the test can cut and restore, to stage an outage.
struct Cable {
    port: u16,
    upstream: String,
    tasks: Vec<JoinHandle<()>>,
}

impl Cable {
    async fn connect(upstream: &str) -> Self {
        let mut cable = Self {
            port: 0,
            upstream: upstream.to_owned(),
            tasks: Vec::new(),
        };
        cable.restore().await;
        cable
    }

    async fn restore(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.port = listener.local_addr().unwrap().port();
        let upstream = self.upstream.clone();
        self.tasks.push(tokio::spawn(async move {
            // Dropped with this task when the cable is cut: that aborts every connection.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                connections.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        }));
    }

    /// Closes the listener and every forwarded connection.
    fn cut(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_gives_fast_503s_and_the_service_recovers_by_itself() {
    let Some(db) = TestDb::create(Backend::Postgres).await else {
        return;
    };
    // postgres://[user@]host:port/db: the cable takes the place of host:port.
    let url = db.url().to_owned();
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (authority, path) = rest.split_once('/').expect("a URL with a database");
    let (userinfo, upstream) = match authority.rsplit_once('@') {
        Some((userinfo, host)) => (format!("{userinfo}@"), host.to_owned()),
        None => (String::new(), authority.to_owned()),
    };
    let upstream = if upstream.contains(':') {
        upstream
    } else {
        format!("{upstream}:5432")
    };
    let mut cable = Cable::connect(&upstream).await;
    let via_cable = format!("{scheme}://{userinfo}127.0.0.1:{}/{path}", cable.port);
    let mut app =
        TestApp::spawn(settings(&via_cable, json!({"database_timeout_seconds": 2}))).await;
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
