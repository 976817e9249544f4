//! Errors everywhere: problem documents, body limits, content types, headers, request ids.

use serde_json::json;

use crate::helpers::{PASSWORD, app_test, assert_problem};

app_test!(malformed_json_is_422_and_stores_nothing, |app| {
    for body in [
        "{",
        "not json",
        "",
        "[]",
        "null",
        r#"{"email": "a@b.co", "password": }"#,
    ] {
        let response = app
            .client
            .post(app.url("/auth/register"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let problem = assert_problem(response, 422, "").await;
        assert_eq!(problem["errors"][0]["field"], "body", "{body:?}");
    }
});

app_test!(a_wrong_content_type_is_415, |app| {
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut request = app
            .client
            .post(app.url("/auth/login"))
            .body(r#"{"email": "a@b.co", "password": "12345678"}"#);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        assert_problem(request.send().await.unwrap(), 415, "").await;
    }
    // A charset parameter is fine.
    let response = app
        .client
        .post(app.url("/auth/login"))
        .header("content-type", "application/json; charset=utf-8")
        .body(r#"{"email": "a@b.co", "password": "12345678"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
});

app_test!(bodies_over_the_limit_are_413_declared_or_streamed, |app| {
    let huge =
        json!({"email": "big@example.com", "password": PASSWORD, "full_name": "x".repeat(70_000)});
    let response = app.post_json("/auth/register", &huge).await;
    assert_problem(response, 413, "").await;
    // No Content-Length: the limit holds while reading. The body is a valid registration
    // padded with whitespace, so only the limit stands between it and a new user.
    let head = json!({"email": "streamed@example.com", "password": PASSWORD}).to_string();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = std::iter::once(Ok(head.into_bytes()))
        .chain((0..80).map(|_| Ok(vec![b' '; 1024])))
        .collect();
    let sent = app
        .client
        .post(app.url("/auth/register"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await;
    match sent {
        Ok(response) => {
            assert_problem(response, 413, "").await;
        }
        // The server may answer 413 and close before the client has finished sending.
        Err(err) => assert!(err.is_request() || err.is_body(), "{err:?}"),
    }
    // Nothing was stored by either attempt.
    assert_eq!(
        app.register("big@example.com", PASSWORD).await.status(),
        201
    );
    assert_eq!(
        app.register("streamed@example.com", PASSWORD)
            .await
            .status(),
        201
    );
});

app_test!(unknown_routes_and_methods_get_problem_documents, |app| {
    let response = app.client.get(app.url("/nope")).send().await.unwrap();
    assert_problem(response, 404, "").await;
    let response = app
        .client
        .delete(app.url("/auth/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["allow"], "POST");
    let body = assert_problem(response, 405, "").await;
    assert!(body.get("errors").is_none(), "only a 422 lists fields");
    let response = app
        .client
        .request(
            reqwest::Method::from_bytes(b"TRACE").unwrap(),
            app.url("/auth/sessions/x"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "DELETE");
});

app_test!(request_ids_are_echoed_or_generated, |app| {
    let response = app
        .client
        .get(app.url("/health"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-me-42");
    let generated = app.client.get(app.url("/nope")).send().await.unwrap();
    let id = generated.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    let unsafe_id = app
        .client
        .get(app.url("/health"))
        .header("x-request-id", "a b")
        .send()
        .await
        .unwrap();
    assert_ne!(unsafe_id.headers()["x-request-id"], "a b");
});

app_test!(security_headers_are_on_every_response, |app| {
    for path in ["/public", "/nope", "/auth/me"] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        let headers = response.headers();
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert!(
            headers["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("default-src 'none'"),
            "{path}"
        );
    }
    let docs = app.client.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(docs.headers()["x-content-type-options"], "nosniff");
    // The docs run inline scripts: their policy only forbids framing them.
    assert_eq!(
        docs.headers()["content-security-policy"],
        "frame-ancestors 'none'"
    );
    assert!(docs.headers().get("strict-transport-security").is_none());
});

app_test!(
    hsts_is_sent_when_configured,
    json!({"hsts_max_age_seconds": 31536000}),
    |app| {
        let response = app.client.get(app.url("/health")).send().await.unwrap();
        assert_eq!(
            response.headers()["strict-transport-security"],
            "max-age=31536000; includeSubDomains"
        );
    }
);

app_test!(
    cors_follows_the_configured_origins,
    json!({"cors_allowed_origins": "https://app.example"}),
    |app| {
        let preflight = |origin: &'static str| {
            app.client
                .request(reqwest::Method::OPTIONS, app.url("/auth/login"))
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header("access-control-request-headers", "content-type")
                .send()
        };
        let allowed = preflight("https://app.example").await.unwrap();
        assert_eq!(
            allowed.headers()["access-control-allow-origin"],
            "https://app.example"
        );
        let refused = preflight("https://evil.example").await.unwrap();
        assert!(
            refused
                .headers()
                .get("access-control-allow-origin")
                .is_none()
        );
    }
);

app_test!(health_public_and_ready_answer, |app| {
    for (path, message) in [("/health", "OK"), ("/ready", "OK")] {
        let body: serde_json::Value = app
            .client
            .get(app.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["message"], message);
    }
    let public: serde_json::Value = app
        .client
        .get(app.url("/public"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(public["message"].as_str().unwrap().contains("public"));
});
