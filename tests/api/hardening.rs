//! The holes of the outside review (issue 7), each closed and kept closed: guessing through a
//! signed-in session, guesses that race the failure delay, unbounded session lists, look-alike
//! emails, IPv6 networks, slow clients, and the smaller header and connection faults.

use std::time::Duration;

use futures::future::join_all;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::helpers::{
    PASSWORD, TestApp, access_token, app_test, assert_problem, assert_unauthorized,
};

/// Statuses of `requests`, sent all at once.
async fn statuses(requests: Vec<reqwest::RequestBuilder>) -> Vec<u16> {
    answers(requests)
        .await
        .into_iter()
        .map(|(status, _)| status)
        .collect()
}

/// Statuses and problem details of `requests`, sent all at once.
async fn answers(requests: Vec<reqwest::RequestBuilder>) -> Vec<(u16, String)> {
    join_all(requests.into_iter().map(|r| async move {
        let response = r.send().await.expect("request");
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or_default();
        (
            status,
            body["detail"].as_str().unwrap_or_default().to_owned(),
        )
    }))
    .await
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

/// Settings where only the failure delay can refuse a guess, and hashing is slow enough
/// (bcrypt cost 9, tens of milliseconds) that every guess sent at once is in flight together.
fn delay_only() -> Value {
    json!({
        "bcrypt_cost": 9,
        "login_limit_per_ip": 1000,
        "login_limit_per_account": 1000,
        "password_check_limit_per_ip": 1000,
        "password_check_limit_per_account": 1000,
    })
}

app_test!(
    concurrent_wrong_logins_start_no_more_hashes_than_the_free_failures_allow,
    delay_only(),
    |app| {
        assert_eq!(
            app.register("target@example.com", PASSWORD).await.status(),
            201
        );
        let guesses = (0..20)
            .map(|n| {
                app.client
                    .post(app.url("/auth/login"))
                    .json(&json!({"email": "target@example.com", "password": format!("guess {n}")}))
            })
            .collect();
        let answers = statuses(guesses).await;
        // login_free_failures (5) + 1 were checked; the rest met the delay they started.
        let checked = count(&answers, 401);
        assert!((1..=6).contains(&checked), "{answers:?}");
        assert_eq!(checked + count(&answers, 429), 20, "{answers:?}");
        // The owner waits out the delay like everyone else, then gets in.
        assert_eq!(
            app.login("target@example.com", PASSWORD).await.status(),
            429
        );
    }
);

app_test!(
    two_instances_admit_no_more_guesses_together_than_one,
    delay_only(),
    |app| {
        let mut other = TestApp::spawn(app.settings.clone()).await;
        assert_eq!(
            app.register("target@example.com", PASSWORD).await.status(),
            201
        );
        let guesses = (0..20)
            .map(|n| {
                let instance = if n % 2 == 0 { &app } else { &other };
                instance
                    .client
                    .post(instance.url("/auth/login"))
                    .json(&json!({"email": "target@example.com", "password": format!("guess {n}")}))
            })
            .collect();
        let answers = statuses(guesses).await;
        assert!((1..=6).contains(&count(&answers, 401)), "{answers:?}");
        assert_eq!(
            count(&answers, 401) + count(&answers, 429),
            20,
            "{answers:?}"
        );
        other.stop().await;
    }
);

app_test!(
    a_stolen_token_cannot_guess_the_password_or_starve_other_logins,
    json!({"bcrypt_cost": 9, "hash_workers": 1, "hash_queue": 8}),
    |app| {
        let stolen = app.token_for("victim@example.com").await;
        assert_eq!(
            app.register("bystander@example.com", PASSWORD)
                .await
                .status(),
            201
        );
        let guesses = (0..100)
            .map(|n| {
                app.client
                    .post(app.url("/auth/password"))
                    .bearer_auth(&stolen)
                    .json(&json!({"current_password": format!("guess {n}"), "new_password": "whatever new"}))
            })
            .collect();
        let (answers, bystander) = tokio::join!(
            answers(guesses),
            app.login("bystander@example.com", PASSWORD)
        );
        // Another user's login is not starved of the hash pool.
        assert_eq!(bystander.status(), 200);
        // At most the free failures plus one were checked; the rest were refused before any
        // hash (429), or met the session that the wrong passwords ended (401 for the token).
        let checked = answers
            .iter()
            .filter(|(_, detail)| detail == "Incorrect password")
            .count();
        assert!((1..=6).contains(&checked), "{answers:?}");
        let codes: Vec<u16> = answers.iter().map(|(status, _)| *status).collect();
        assert_eq!(count(&codes, 503), 0, "{answers:?}");
        assert_eq!(count(&codes, 401) + count(&codes, 429), 100, "{answers:?}");
        // The guessing session is over.
        assert_unauthorized(app.get_auth("/auth/me", &stolen).await, "").await;
    }
);

app_test!(
    wrong_current_passwords_end_the_session_after_the_free_failures,
    json!({"password_check_limit_per_account": 100}),
    |app| {
        let token = app.token_for("owner@example.com").await;
        let change = |current: &str| {
            app.client
                .post(app.url("/auth/password"))
                .bearer_auth(&token)
                .json(&json!({"current_password": current, "new_password": "brand new one"}))
                .send()
        };
        for _ in 0..4 {
            assert_unauthorized(change("wrong").await.unwrap(), "Incorrect password").await;
        }
        assert_eq!(app.get_auth("/auth/me", &token).await.status(), 200);
        assert_unauthorized(change("wrong").await.unwrap(), "Incorrect password").await;
        assert_unauthorized(app.get_auth("/auth/me", &token).await, "").await;
        // Those five count in the run that login uses: a sixth failure, at the login form this
        // time, starts the delay, which then refuses even the right password.
        assert_eq!(app.login("owner@example.com", "wrong").await.status(), 401);
        let refused = app.login("owner@example.com", PASSWORD).await;
        assert_problem(refused, 429, "Too many attempts").await;
    }
);

app_test!(
    password_changes_are_limited_per_user,
    json!({"password_check_limit_per_account": 2}),
    |app| {
        let token = app.token_for("owner@example.com").await;
        let other = app.token_for_existing("owner@example.com").await;
        let change = |token: &str| {
            app.client
                .post(app.url("/auth/password"))
                .bearer_auth(token)
                .json(&json!({"current_password": "wrong", "new_password": "brand new one"}))
                .send()
        };
        assert_eq!(change(&token).await.unwrap().status(), 401);
        assert_eq!(change(&other).await.unwrap().status(), 401);
        // The user's budget is shared by all of their sessions.
        let refused = change(&token).await.unwrap();
        assert!(refused.headers().contains_key("retry-after"));
        assert_problem(refused, 429, "Too many attempts").await;
    }
);

app_test!(
    a_new_login_beyond_the_session_limit_ends_the_least_recently_used,
    json!({"max_sessions_per_user": 3}),
    |app| {
        assert_eq!(
            app.register("busy@example.com", PASSWORD).await.status(),
            201
        );
        let mut tokens = Vec::new();
        for _ in 0..5 {
            tokens.push(app.token_for_existing("busy@example.com").await);
        }
        let newest = tokens.last().unwrap();
        let listed: Vec<Value> = app
            .get_auth("/auth/sessions", newest)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(listed.len(), 3);
        for old in &tokens[..2] {
            assert_unauthorized(app.get_auth("/auth/me", old).await, "").await;
        }
        for live in &tokens[2..] {
            assert_eq!(app.get_auth("/auth/me", live).await.status(), 200);
        }
    }
);

app_test!(look_alike_addresses_are_one_account, |app| {
    assert_eq!(
        app.register("kelly@example.com", PASSWORD).await.status(),
        201
    );
    for twin in [
        "\u{ff4b}elly@example.com",
        "k\u{435}lly@example.com",
        "\u{1d424}elly@example.com",
        "KELLY@example.com",
    ] {
        assert_problem(
            app.register(twin, PASSWORD).await,
            400,
            "Email already registered",
        )
        .await;
    }
    assert_eq!(
        app.register("ikelly@example.com", PASSWORD).await.status(),
        201
    );
    assert_problem(
        app.register("\u{131}kelly@example.com", PASSWORD).await,
        400,
        "Email already registered",
    )
    .await;
    // A look-alike of an address is that address's account.
    let tokens: Value = app
        .login("\u{ff4b}elly@example.com", PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    let me: Value = app
        .get_auth("/auth/me", &access_token(&tokens))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["email"], "kelly@example.com");
});

app_test!(
    ipv6_clients_are_counted_per_64,
    json!({"trusted_proxies": "127.0.0.1", "register_limit_per_ip": 2}),
    |app| {
        let register = |n: u32, from: &str| {
            app.client
                .post(app.url("/auth/register"))
                .header("x-forwarded-for", from)
                .json(&json!({"email": format!("probe{n}@example.com"), "password": PASSWORD}))
                .send()
        };
        assert_eq!(register(1, "2001:db8:0:1::1").await.unwrap().status(), 201);
        assert_eq!(register(2, "2001:db8:0:1::2").await.unwrap().status(), 201);
        assert_eq!(
            register(3, "2001:db8:0:1:ffff::3").await.unwrap().status(),
            429
        );
        assert_eq!(register(4, "2001:db8:0:2::1").await.unwrap().status(), 201);
    }
);

app_test!(
    personal_answers_are_never_cached_and_no_page_can_be_framed,
    json!({"cors_allowed_origins": "https://app.example"}),
    |app| {
        let token = app.token_for("me@example.com").await;
        for path in ["/protected/user", "/auth/me", "/auth/sessions"] {
            let response = app.get_auth(path, &token).await;
            assert_eq!(response.headers()["cache-control"], "no-store", "{path}");
        }
        for path in ["/docs", "/redoc"] {
            let response = app.client.get(app.url(path)).send().await.unwrap();
            assert_eq!(response.headers()["x-frame-options"], "DENY", "{path}");
            let csp = response.headers()["content-security-policy"]
                .to_str()
                .unwrap();
            assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        }
        let allowed = app
            .client
            .get(app.url("/public"))
            .header("origin", "https://app.example")
            .send()
            .await
            .unwrap();
        assert_eq!(
            allowed.headers()["access-control-allow-origin"],
            "https://app.example"
        );
        let vary: Vec<_> = allowed.headers().get_all("vary").iter().collect();
        assert!(
            vary.iter().any(|v| v.to_str().unwrap().contains("Origin")),
            "{vary:?}"
        );
    }
);

app_test!(unsafe_request_ids_are_replaced, |app| {
    for (sent, kept) in [
        ("trace-42", true),
        ("a\"b", false),
        (&*"x".repeat(65), false),
    ] {
        let response = app
            .client
            .get(app.url("/public"))
            .header("x-request-id", sent)
            .send()
            .await
            .unwrap();
        let echoed = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(echoed == sent, kept, "{sent}");
    }
});

/// Sends `request` on a fresh connection and reads until the server closes it or `wait`
/// passes: what came back, and whether the server closed the connection.
async fn raw_exchange(app: &TestApp, request: &[u8], wait: Duration) -> (String, bool) {
    let address = app.address.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let closed = tokio::time::timeout(wait, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&received).into_owned(), closed)
}

app_test!(
    a_client_that_stalls_in_its_headers_or_body_is_cut_off,
    json!({"header_read_timeout_seconds": 1, "body_read_timeout_seconds": 1}),
    |app| {
        let (answer, closed) = raw_exchange(
            &app,
            b"GET /public HTTP/1.1\r\nHost: x\r\nX-Slow:",
            Duration::from_secs(5),
        )
        .await;
        assert!(
            closed,
            "a half-sent head must not hold the connection: {answer:?}"
        );

        let (answer, closed) = raw_exchange(
            &app,
            b"POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"email\":",
            Duration::from_secs(5),
        )
        .await;
        assert!(
            closed,
            "a half-sent body must not hold the connection: {answer:?}"
        );
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer:?}"
        );

        // Kept alive after an answer, a connection waits for the next head no longer either.
        let started = std::time::Instant::now();
        let (answer, closed) = raw_exchange(
            &app,
            b"GET /public HTTP/1.1\r\nHost: x\r\n\r\n",
            Duration::from_secs(5),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
        assert!(closed, "an idle kept-alive connection must be closed");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "closed after {:?}",
            started.elapsed()
        );
    }
);

app_test!(
    connections_beyond_the_limit_are_closed_at_once,
    json!({"max_connections": 2}),
    |app| {
        let address = app.address.trim_start_matches("http://").to_owned();
        let first = TcpStream::connect(&address).await.unwrap();
        let second = TcpStream::connect(&address).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (answer, closed) = raw_exchange(
            &app,
            b"GET /public HTTP/1.1\r\nHost: x\r\n\r\n",
            Duration::from_secs(5),
        )
        .await;
        assert!(closed && answer.is_empty(), "{answer:?}");
        drop((first, second));
        // The server notices the two closing in its own time; then there is room again.
        let mut answer = String::new();
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            answer = raw_exchange(
                &app,
                b"GET /public HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                Duration::from_secs(5),
            )
            .await
            .0;
            if !answer.is_empty() {
                break;
            }
        }
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    }
);

app_test!(
    an_answer_given_before_the_body_was_read_closes_the_connection,
    |app| {
        let head = b"POST /auth/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n";
        let (answer, _) = raw_exchange(&app, head, Duration::from_secs(2)).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer:?}"
        );

        // A client that keeps reusing its connection after a 413 always gets its next answer.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .build()
            .unwrap();
        let big = json!({"email": "big@example.com", "password": "x".repeat(100 * 1024)});
        // Fewer registrations than register_limit_per_ip allows in a window.
        for n in 0..25 {
            let refused = client
                .post(app.url("/auth/register"))
                .json(&big)
                .send()
                .await
                .unwrap();
            assert_eq!(refused.status(), 413);
            let small = json!({
                "email": format!("small{n}@example.com"),
                "password": PASSWORD,
                "full_name": "y".repeat(200),
            });
            let answered = client
                .post(app.url("/auth/register"))
                .json(&small)
                .send()
                .await;
            assert_eq!(
                answered
                    .expect("an answer, on a reused or a new connection")
                    .status(),
                201
            );
        }
    }
);
