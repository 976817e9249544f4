//! The admin API and the audit trail, over HTTP, on SQLite and PostgreSQL.

use std::collections::BTreeSet;
use std::time::Duration;

use portcullis::domain::{Email, Password, Role};
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TestApp, app_test, assert_problem, assert_unauthorized};

/// Creates users `prefix0@example.com` ... through the operator (no rate limits): their ids.
async fn seed(app: &TestApp, prefix: &str, count: usize) -> Vec<i64> {
    let operator = app.operator().await;
    let mut ids = Vec::with_capacity(count);
    for n in 0..count {
        let user = operator
            .admin
            .create_user_as_operator(
                Email::parse(&format!("{prefix}{n}@example.com")).unwrap(),
                Password::parse(PASSWORD).unwrap(),
                Role::User,
            )
            .await
            .unwrap();
        ids.push(user.id.0);
    }
    ids
}

async fn get(app: &TestApp, path: &str, token: &str) -> reqwest::Response {
    app.get_auth(path, token).await
}

async fn json_of(response: reqwest::Response) -> Value {
    assert!(response.status().is_success(), "{}", response.status());
    response.json().await.unwrap()
}

fn ids(page: &Value) -> Vec<i64> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_i64().unwrap())
        .collect()
}

app_test!(
    every_admin_route_refuses_users_and_anonymous_callers,
    |app| {
        let user = app.token_for("plain@example.com").await;
        let routes = [
            ("GET", "/admin/users"),
            ("POST", "/admin/users"),
            ("GET", "/admin/users/1"),
            ("PATCH", "/admin/users/1"),
            ("DELETE", "/admin/users/1"),
            ("GET", "/admin/users/1/sessions"),
            ("DELETE", "/admin/users/1/sessions"),
            ("POST", "/admin/users/1/password-reset"),
            ("GET", "/admin/audit"),
        ];
        for (method, path) in routes {
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let request = || {
                app.client
                    .request(method.clone(), app.url(path))
                    .json(&json!({"email": "x@example.com"}))
            };
            assert_unauthorized(request().send().await.unwrap(), "").await;
            assert_problem(
                request().bearer_auth(&user).send().await.unwrap(),
                403,
                "Insufficient privileges",
            )
            .await;
        }
    }
);

app_test!(
    paging_while_users_come_and_go_shows_every_survivor_exactly_once,
    |app| {
        let admin = app.admin_token("root@example.com").await;
        let original = seed(&app, "page", 150).await;
        let operator = app.operator().await;
        let mut seen = Vec::new();
        let mut deleted = BTreeSet::new();
        let mut cursor: Option<String> = None;
        let mut round = 0;
        loop {
            let path = match &cursor {
                Some(c) => format!("/admin/users?limit=20&cursor={c}"),
                None => "/admin/users?limit=20".to_owned(),
            };
            let page = json_of(get(&app, &path, &admin).await).await;
            seen.extend(ids(&page));
            // Between pages: new users arrive, and old ones (seen or not) are deleted.
            seed(&app, &format!("late{round}x"), 3).await;
            for victim in [original[round * 7 % 150], original[(round * 13 + 5) % 150]] {
                if deleted.insert(victim) {
                    let email = format!(
                        "page{}@example.com",
                        original.iter().position(|id| *id == victim).unwrap()
                    );
                    operator
                        .admin
                        .delete_by_email(&Email::parse(&email).unwrap())
                        .await
                        .unwrap();
                }
            }
            round += 1;
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        let unique: BTreeSet<i64> = seen.iter().copied().collect();
        assert_eq!(unique.len(), seen.len(), "no user twice");
        // Newest first.
        assert!(seen.windows(2).all(|w| w[0] > w[1]));
        let survivors: BTreeSet<i64> = original
            .iter()
            .copied()
            .filter(|id| !deleted.contains(id))
            .collect();
        assert!(survivors.is_subset(&unique), "every survivor seen");
    }
);

app_test!(
    search_finds_substrings_of_emails_and_names_with_filters,
    |app| {
        let admin = app.admin_token("root@example.com").await;
        let operator = app.operator().await;
        for (email, name) in [
            ("alice.smith@example.com", "Alice Smith"),
            ("bob@sample.org", "Robert Jones"),
            ("carol@example.com", "Carol 50% Off_Sale"),
        ] {
            let created = app
                .client
                .post(app.url("/admin/users"))
                .bearer_auth(&admin)
                .json(&json!({"email": email, "full_name": name, "password": PASSWORD}))
                .send()
                .await
                .unwrap();
            assert_eq!(created.status(), 201);
        }
        operator
            .admin
            .set_active(&Email::parse("bob@sample.org").unwrap(), false)
            .await
            .unwrap();
        let emails = |page: Value| -> BTreeSet<String> {
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u["email"].as_str().unwrap().to_owned())
                .collect()
        };
        let search = |q: &str| format!("/admin/users?q={}", urlencode(q));
        for (q, expected) in [
            ("alice", vec!["alice.smith@example.com"]),
            ("ALICE.S", vec!["alice.smith@example.com"]),
            ("SAMPLE", vec!["bob@sample.org"]),
            ("jones", vec!["bob@sample.org"]),
            ("50%", vec!["carol@example.com"]),
            ("f_s", vec!["carol@example.com"]),
            ("%", vec!["carol@example.com"]),
            ("nobody", vec![]),
        ] {
            let found = emails(json_of(get(&app, &search(q), &admin).await).await);
            let expected: BTreeSet<String> = expected.into_iter().map(String::from).collect();
            assert_eq!(found, expected, "q={q}");
        }
        let active_only = emails(
            json_of(get(&app, "/admin/users?q=o&is_active=true&role=user", &admin).await).await,
        );
        assert!(active_only.contains("carol@example.com"));
        assert!(!active_only.contains("bob@sample.org"));
        assert!(!active_only.contains("root@example.com"));
        let admins = emails(json_of(get(&app, "/admin/users?role=admin", &admin).await).await);
        assert_eq!(admins, BTreeSet::from(["root@example.com".to_owned()]));
    }
);

/// Percent-encodes a query value.
fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

app_test!(bad_parameters_are_422_naming_them, |app| {
    let admin = app.admin_token("root@example.com").await;
    let audit_page = json_of(get(&app, "/admin/audit?limit=1", &admin).await).await;
    let foreign = audit_page["next_cursor"].as_str().unwrap().to_owned();
    for (path, field) in [
        ("/admin/users?limit=0", "limit"),
        ("/admin/users?limit=201", "limit"),
        ("/admin/users?limit=ten", "limit"),
        ("/admin/users?cursor=%21%21", "cursor"),
        (&format!("/admin/users?cursor={foreign}"), "cursor"),
        (&format!("/admin/users?q={}", "x".repeat(201)), "q"),
        ("/admin/users?role=root", "role"),
        ("/admin/users?is_active=maybe", "is_active"),
        ("/admin/users?email_verified=1", "email_verified"),
        ("/admin/audit?since=yesterday", "since"),
        ("/admin/audit?until=2026-13-01T00:00:00Z", "until"),
        ("/admin/audit?kind=login.nope", "kind"),
        ("/admin/audit?user_id=abc", "user_id"),
        // A NUL or another control character is the caller's mistake on both databases,
        // never a 5xx (PostgreSQL refuses a NUL in text outright).
        ("/admin/users?q=a%00b", "q"),
        ("/admin/users?q=%00", "q"),
        ("/admin/users?q=line%0Abreak", "q"),
        ("/admin/audit?kind=login.failed%00", "kind"),
    ] {
        let body = assert_problem(get(&app, path, &admin).await, 422, "").await;
        let fields: Vec<&str> = body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert_eq!(fields, [field], "{path}");
    }
    assert_problem(
        get(&app, "/admin/users/99999", &admin).await,
        404,
        "User not found",
    )
    .await;
    assert_problem(
        get(&app, "/admin/users/abc", &admin).await,
        404,
        "User not found",
    )
    .await;
    for body in [json!({"role": "owner"}), json!([null, null]), json!("text")] {
        let bad_patch = app
            .client
            .patch(app.url("/admin/users/1"))
            .bearer_auth(&admin)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_problem(bad_patch, 422, "").await;
    }
    // `null` would read as "leave it" and answer 200 having changed nothing: refused, naming
    // the field (only `full_name: null` means something: clear it).
    for field in ["role", "is_active", "email_verified"] {
        let null_patch = app
            .client
            .patch(app.url("/admin/users/1"))
            .bearer_auth(&admin)
            .json(&json!({ field: null }))
            .send()
            .await
            .unwrap();
        let body = assert_problem(null_patch, 422, "").await;
        assert_eq!(body["errors"][0]["field"], field, "{body}");
        assert_eq!(body["errors"][0]["message"], "must not be null", "{body}");
    }
    // Empty values, as a form sends unset fields, are no values.
    let all = json_of(
        get(
            &app,
            "/admin/users?limit=&cursor=&q=&role=&is_active=",
            &admin,
        )
        .await,
    )
    .await;
    assert_eq!(all["items"].as_array().unwrap().len(), 1);
});

app_test!(
    admins_change_deactivate_and_delete_users_with_immediate_effect,
    |app| {
        let admin = app.admin_token("root@example.com").await;
        let victim = app.token_for("victim@example.com").await;
        let me = json_of(get(&app, "/auth/me", &victim).await).await;
        let id = me["id"].as_i64().unwrap();

        let shown = json_of(get(&app, &format!("/admin/users/{id}"), &admin).await).await;
        assert!(shown["last_login_at"].is_string());
        assert!(shown["updated_at"].is_string());
        let sessions =
            json_of(get(&app, &format!("/admin/users/{id}/sessions"), &admin).await).await;
        assert_eq!(sessions.as_array().unwrap().len(), 1);
        assert!(sessions[0].get("current").is_none());

        let patch = |body: Value| {
            app.client
                .patch(app.url(&format!("/admin/users/{id}")))
                .bearer_auth(&admin)
                .json(&body)
                .send()
        };
        let named = json_of(
            patch(json!({"full_name": "Vic Tim", "email_verified": true}))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (
                named["full_name"].as_str(),
                named["email_verified"].as_bool()
            ),
            (Some("Vic Tim"), Some(true))
        );
        let cleared = json_of(patch(json!({"full_name": null})).await.unwrap()).await;
        assert!(cleared["full_name"].is_null());
        let off = json_of(patch(json!({"is_active": false})).await.unwrap()).await;
        assert_eq!(off["is_active"], false);
        assert_unauthorized(get(&app, "/auth/me", &victim).await, "").await;
        json_of(patch(json!({"is_active": true})).await.unwrap()).await;

        // A new login, its sessions ended by the admin, then the user deleted.
        let again = app.token_for_existing("victim@example.com").await;
        let ended = app
            .client
            .delete(app.url(&format!("/admin/users/{id}/sessions")))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(ended.status(), 204);
        assert_unauthorized(get(&app, "/auth/me", &again).await, "").await;
        let third = app.token_for_existing("victim@example.com").await;
        let deleted = app
            .client
            .delete(app.url(&format!("/admin/users/{id}")))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(deleted.status(), 204);
        assert_unauthorized(get(&app, "/auth/me", &third).await, "").await;
        assert_problem(
            get(&app, &format!("/admin/users/{id}"), &admin).await,
            404,
            "User not found",
        )
        .await;
        // Its events stay, with its id, and say who did what.
        let trail = json_of(get(&app, &format!("/admin/audit?user_id={id}"), &admin).await).await;
        let kinds: Vec<&str> = trail["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        for kind in [
            "user.deleted",
            "admin.sessions_ended",
            "user.updated",
            "login.succeeded",
            "user.registered",
        ] {
            assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
        }
        let deletion = &trail["items"][0];
        assert_eq!(deletion["kind"], "user.deleted");
        assert_eq!(deletion["outcome"], "success");
        let root = json_of(get(&app, "/auth/me", &admin).await).await;
        assert_eq!(deletion["actor_id"], root["id"]);
        assert_eq!(deletion["ip"], "127.0.0.1");
    }
);

app_test!(the_last_active_admin_cannot_be_removed, |app| {
    let admin = app.admin_token("root@example.com").await;
    let root = json_of(get(&app, "/auth/me", &admin).await).await["id"]
        .as_i64()
        .unwrap();
    for (method, body) in [
        (reqwest::Method::PATCH, json!({"role": "user"})),
        (reqwest::Method::PATCH, json!({"is_active": false})),
        (reqwest::Method::DELETE, json!(null)),
    ] {
        let refused = app
            .client
            .request(method, app.url(&format!("/admin/users/{root}")))
            .bearer_auth(&admin)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_problem(refused, 409, "Would leave no active admin").await;
    }
    // With a second admin, one of them may go.
    app.admin_token("second@example.com").await;
    let demoted = app
        .client
        .patch(app.url(&format!("/admin/users/{root}")))
        .bearer_auth(&admin)
        .json(&json!({"role": "user"}))
        .send()
        .await
        .unwrap();
    assert_eq!(demoted.status(), 200);
});

app_test!(failed_and_successful_logins_are_in_the_trail, |app| {
    let admin = app.admin_token("root@example.com").await;
    assert_eq!(
        app.register("known@example.com", PASSWORD).await.status(),
        201
    );
    assert_eq!(
        app.login("known@example.com", "wrong password")
            .await
            .status(),
        401
    );
    assert_eq!(
        app.login("unknown@example.com", "wrong password")
            .await
            .status(),
        401
    );
    let failed = json_of(get(&app, "/admin/audit?kind=login.failed", &admin).await).await;
    let items = failed["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    // Newest first: the unknown email names nobody, the known one its user.
    assert!(items[0]["user_id"].is_null());
    assert!(items[1]["user_id"].is_i64());
    assert!(items.iter().all(|e| e["outcome"] == "failure"));
    let page = json_of(get(&app, "/admin/audit?limit=2", &admin).await).await;
    let next = page["next_cursor"].as_str().unwrap();
    let older =
        json_of(get(&app, &format!("/admin/audit?limit=2&cursor={next}"), &admin).await).await;
    assert!(ids(&older).iter().all(|id| *id < ids(&page)[1]));
    let recent = json_of(
        get(
            &app,
            "/admin/audit?since=2000-01-01T00:00:00Z&until=2999-01-01T00:00:00Z",
            &admin,
        )
        .await,
    )
    .await;
    assert!(recent["items"].as_array().unwrap().len() >= 4);
    let none = json_of(get(&app, "/admin/audit?until=2000-01-01T00:00:00Z", &admin).await).await;
    assert!(none["items"].as_array().unwrap().is_empty());
});

app_test!(
    a_strangers_failures_fold_into_one_event_per_minute_limits_on_or_off,
    json!({"rate_limits_enabled": false}),
    |app| {
        let admin = app.admin_token("root@example.com").await;
        assert_eq!(
            app.register("known@example.com", PASSWORD).await.status(),
            201
        );
        let long_agent = "a".repeat(5000);
        for email in ["known@example.com", "unknown@example.com"] {
            for _ in 0..12 {
                let failed = app
                    .client
                    .post(app.url("/auth/login"))
                    .header("user-agent", &long_agent)
                    .json(&json!({"email": email, "password": "wrong password"}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(failed.status(), 401);
            }
        }
        let trail = json_of(get(&app, "/admin/audit?kind=login.failed", &admin).await).await;
        let items = trail["items"].as_array().unwrap();
        // One event per account (or none) and client address, each counting its failures,
        // the registered account's naming its user.
        assert_eq!(items.len(), 2, "{trail}");
        for event in items {
            assert_eq!(event["detail"]["count"], "12", "{event}");
            assert_eq!(event["ip"], "127.0.0.1");
            assert_eq!(
                event["user_agent"].as_str().unwrap().chars().count(),
                256,
                "user agents are kept to 256 characters"
            );
        }
        assert!(items[0]["user_id"].is_null());
        assert!(items[1]["user_id"].is_i64());
    }
);

app_test!(an_admin_creates_a_user_with_a_password_or_not, |app| {
    let admin = app.admin_token("root@example.com").await;
    let create = |body: Value| {
        app.client
            .post(app.url("/admin/users"))
            .bearer_auth(&admin)
            .json(&body)
            .send()
    };
    let made = create(json!({"email": "made@example.com", "role": "admin", "password": PASSWORD}))
        .await
        .unwrap();
    assert_eq!(made.status(), 201);
    let body: Value = made.json().await.unwrap();
    assert_eq!(
        (body["role"].as_str(), body["last_login_at"].is_null()),
        (Some("admin"), true)
    );
    assert_eq!(app.login("made@example.com", PASSWORD).await.status(), 200);
    assert_problem(
        create(json!({"email": "MADE@example.com", "password": PASSWORD}))
            .await
            .unwrap(),
        400,
        "Email already registered",
    )
    .await;
    assert_problem(
        create(json!({"email": "x@example.com", "password": "short"}))
            .await
            .unwrap(),
        422,
        "",
    )
    .await;
    // Without a password the user needs a link, and these settings have no mail.
    assert_problem(
        create(json!({"email": "invited@example.com"}))
            .await
            .unwrap(),
        503,
        "Mail is not configured",
    )
    .await;
    let listed = json_of(get(&app, "/admin/users?q=invited", &admin).await).await;
    assert!(
        listed["items"].as_array().unwrap().is_empty(),
        "nothing was created"
    );
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invited_user_sets_a_password_through_the_mailed_link() {
    let Some(db) = crate::helpers::TestDb::create(crate::helpers::Backend::Sqlite).await else {
        return;
    };
    let smtp = crate::smtp::SmtpServer::start().await;
    let mut app = TestApp::spawn(crate::helpers::settings(
        db.url(),
        json!({"mail_transport": "smtp", "smtp_url": smtp.url()}),
    ))
    .await;
    let admin = app.admin_token("root@example.com").await;
    let invited = app
        .client
        .post(app.url("/admin/users"))
        .bearer_auth(&admin)
        .json(&json!({"email": "invited@example.com", "full_name": "New Person"}))
        .send()
        .await
        .unwrap();
    assert_eq!(invited.status(), 201);
    let mail = smtp
        .wait_for("invited@example.com", Duration::from_secs(10))
        .await;
    assert_eq!(mail.subject(), "Your new account");
    assert!(mail.text().contains("72 hours") || mail.text().contains("3 days"));
    let token = mail.token("/console/reset").expect("a set-password link");
    let set = app
        .post_json(
            "/auth/password/reset",
            &json!({"token": token, "new_password": "my own passphrase"}),
        )
        .await;
    assert_eq!(set.status(), 204);
    assert_eq!(
        app.login("invited@example.com", "my own passphrase")
            .await
            .status(),
        200
    );

    // The admin's reset link goes out too.
    let id = json_of(get(&app, "/admin/users?q=invited", &admin).await).await["items"][0]["id"]
        .as_i64()
        .unwrap();
    let sent = app
        .client
        .post(app.url(&format!("/admin/users/{id}/password-reset")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 202);
    smtp.wait_for_subject(
        "invited@example.com",
        "Reset your password",
        Duration::from_secs(10),
    )
    .await;
    app.stop().await;
    db.drop_database().await;
}
