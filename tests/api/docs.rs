//! The OpenAPI document, Swagger UI and ReDoc.

use serde_json::{Value, json};

use crate::helpers::{TestApp, app_test};

/// The OpenAPI document `app` serves.
async fn served_spec(app: &TestApp) -> Value {
    app.client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

app_test!(
    the_openapi_document_lists_every_route_with_its_errors,
    |app| {
        let spec = served_spec(&app).await;
        assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
        let paths = spec["paths"].as_object().unwrap();
        for (path, method) in [
            ("/public", "get"),
            ("/health", "get"),
            ("/ready", "get"),
            ("/auth/register", "post"),
            ("/auth/login", "post"),
            ("/auth/token", "post"),
            ("/auth/me", "get"),
            ("/auth/refresh", "post"),
            ("/auth/logout", "post"),
            ("/auth/sessions", "get"),
            ("/auth/sessions/{id}", "delete"),
            ("/auth/password", "post"),
            ("/protected/user", "get"),
            ("/protected/admin", "get"),
        ] {
            let operation = &paths[path][method];
            assert!(
                operation["summary"].is_string(),
                "{method} {path} has no summary"
            );
            assert!(
                operation["tags"][0].is_string(),
                "{method} {path} has no tag"
            );
            let responses = operation["responses"].as_object().unwrap();
            if path != "/public" && path != "/health" {
                assert!(
                    responses
                        .keys()
                        .any(|status| status.starts_with('4') || status.starts_with('5')),
                    "{method} {path} documents no error"
                );
            }
        }
        let protected = &paths["/protected/admin"]["get"];
        assert!(protected["responses"]["403"].is_object());
        let schemes: Vec<String> = protected["security"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s.as_object().unwrap().keys().cloned())
            .collect();
        assert_eq!(schemes, ["BearerAuth", "OAuth2Password"]);
        assert_eq!(
            spec["components"]["securitySchemes"]["OAuth2Password"]["flows"]["password"]["tokenUrl"],
            "/auth/token"
        );
        // OpenAPI 3.0 requires the scopes map, even empty.
        assert!(
            spec["components"]["securitySchemes"]["OAuth2Password"]["flows"]["password"]["scopes"]
                .is_object()
        );
        // What the server sends and what the schemas say agree.
        let schemas = &spec["components"]["schemas"];
        assert_eq!(
            schemas["UserResponse"]["properties"]["full_name"]["nullable"],
            true
        );
        // What the server enforces is declared, so generated clients check the same.
        let register = &schemas["RegisterRequest"]["properties"];
        assert_eq!(register["email"]["format"], "email");
        assert_eq!(register["email"]["maxLength"], 254);
        assert_eq!(
            schemas["LoginRequest"]["properties"]["email"]["format"],
            "email"
        );
        assert_eq!(register["password"]["minLength"], 8);
        assert_eq!(register["password"]["maxLength"], 72);
        assert!(register["password"]["pattern"].is_string());
        assert_eq!(register["full_name"]["maxLength"], 255);
        let change = &schemas["ChangePasswordRequest"]["properties"]["new_password"];
        assert_eq!(change["maxLength"], 72);
        // The admin listings parse their parameters themselves; the document says their types.
        let listed = paths["/admin/users"]["get"]["parameters"]
            .as_array()
            .unwrap();
        let limit = listed.iter().find(|p| p["name"] == "limit").unwrap();
        assert_eq!(limit["schema"]["type"], "integer");
        assert_eq!(limit["schema"]["maximum"], 200);
        let role = listed.iter().find(|p| p["name"] == "role").unwrap();
        assert_eq!(role["schema"]["enum"], json!(["user", "admin"]));
        let problem_required = schemas["Problem"]["required"].as_array().unwrap();
        assert!(!problem_required.contains(&Value::from("errors")));
        assert_eq!(
            paths["/auth/register"]["post"]["responses"]["422"]["content"]["application/problem+json"]
                ["schema"]["$ref"],
            "#/components/schemas/Problem"
        );
    }
);

app_test!(
    the_docs_pages_carry_their_assets_and_load_nothing_from_a_cdn,
    |app| {
        for path in ["/docs", "/redoc"] {
            let response = app.client.get(app.url(path)).send().await.unwrap();
            assert_eq!(response.status(), 200, "{path}");
            let html = response.text().await.unwrap();
            assert!(html.len() > 100_000, "{path} does not embed its script");
            assert!(
                !html.contains("cdn.jsdelivr") && !html.contains("unpkg.com"),
                "{path}"
            );
            assert!(!html.contains("<script src=\"http"), "{path}");
            assert!(!html.contains("fonts.googleapis.com"), "{path}");
        }
    }
);

app_test!(metrics_are_exposed_in_prometheus_text_format, |app| {
    let token = app.token_for("metrics@example.com").await;
    assert_eq!(app.get_auth("/protected/user", &token).await.status(), 200);
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = response.text().await.unwrap();
    for expected in [
        "portcullis_http_requests_total{route=\"/protected/user\",method=\"GET\",status=\"200\"}",
        "portcullis_http_request_duration_seconds_bucket{route=\"/protected/user\",method=\"GET\",le=",
        "portcullis_logins_total{outcome=\"success\"}",
        "portcullis_password_hash_queue_depth",
        "portcullis_password_hash_wait_seconds_bucket",
        "portcullis_db_pool_connections{state=\"idle\"}",
        "portcullis_db_pool_connections{state=\"in_use\"}",
    ] {
        assert!(text.contains(expected), "missing {expected} in\n{text}");
    }
});

/// The request body schema of `method path` in `spec`, references followed once.
fn request_schema<'a>(spec: &'a Value, path: &str, method: &str) -> &'a Value {
    let schema =
        &spec["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"];
    match schema["$ref"].as_str() {
        Some(reference) => {
            let name = reference.trim_start_matches("#/components/schemas/");
            &spec["components"]["schemas"][name]
        }
        None => schema,
    }
}

/// The fields each branch of a `oneOf` requires.
fn one_of(schema: &Value) -> Vec<Value> {
    schema["oneOf"]
        .as_array()
        .expect("oneOf")
        .iter()
        .map(|branch| branch["required"].clone())
        .collect()
}

app_test!(
    the_document_says_what_the_handlers_enforce_so_fuzzers_and_clients_agree,
    json!({"public_url": "http://localhost:8123"}),
    |app| {
        let spec = app.get_json("/openapi.json").await;
        // Exactly one of two fields.
        for (path, method, choices) in [
            ("/auth/mfa/totp", "delete", json!([["code"], ["password"]])),
            (
                "/auth/mfa/verify",
                "post",
                json!([["code"], ["recovery_code"]]),
            ),
            (
                "/auth/passkeys/register/start",
                "post",
                json!([["current_password"], ["code"]]),
            ),
        ] {
            assert_eq!(
                json!(one_of(request_schema(&spec, path, method))),
                choices,
                "{path}"
            );
        }
        assert_eq!(
            request_schema(&spec, "/auth/mfa/totp", "post")["required"],
            json!(["current_password"])
        );
        assert_eq!(
            request_schema(&spec, "/auth/mfa/totp/confirm", "post")["required"],
            json!(["code"])
        );
        // A passkey's name: as long, and of the characters, that the handlers take.
        let name = &request_schema(&spec, "/auth/passkeys/{id}", "patch")["properties"]["name"];
        assert_eq!(name["maxLength"], 64);
        assert!(name["pattern"].as_str().unwrap().contains(r"\u0000-\u001F"));
        // The WebAuthn answers: an object (never null), with the members each ceremony reads.
        for (path, response) in [
            (
                "/auth/passkeys/register/finish",
                json!(["clientDataJSON", "attestationObject"]),
            ),
            (
                "/auth/passkeys/login/finish",
                json!([
                    "clientDataJSON",
                    "authenticatorData",
                    "signature",
                    "userHandle"
                ]),
            ),
        ] {
            let schema = request_schema(&spec, path, "post");
            let direct = &schema["oneOf"][0];
            assert_eq!(
                direct["required"],
                json!(["id", "rawId", "type", "response"])
            );
            assert_eq!(direct["properties"]["response"]["required"], response);
            assert_eq!(schema["oneOf"][1]["required"], json!(["credential"]));
            assert!(schema["nullable"].is_null(), "{path}");
        }
        // And the handlers refuse what the document refuses: a null body, both or neither.
        let token = app.token_for("doc@example.com").await;
        for (path, body) in [
            ("/auth/passkeys/register/finish", Value::Null),
            ("/auth/passkeys/login/finish", Value::Null),
            ("/auth/passkeys/register/start", json!({})),
            (
                "/auth/passkeys/register/start",
                json!({"current_password": "x", "code": "123456"}),
            ),
        ] {
            let response = app
                .client
                .post(app.url(path))
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 422, "{path} {body}");
        }
        for name in ["", "   ", &"x".repeat(65), "tab\there"] {
            let renamed = app
                .client
                .patch(app.url(&format!("/auth/passkeys/{}", uuid::Uuid::nil())))
                .bearer_auth(&token)
                .json(&json!({ "name": name }))
                .send()
                .await
                .unwrap();
            assert_eq!(renamed.status(), 422, "{name:?}");
        }
    }
);

app_test!(
    the_committed_openapi_file_is_what_the_server_serves,
    |app| {
        let served = served_spec(&app).await;
        let file =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json"))
                .unwrap();
        let committed: Value = serde_json::from_str(&file).unwrap();
        assert!(
            served == committed,
            "docs/openapi.json differs from the code: run `cargo run -q -- openapi > docs/openapi.json`"
        );
    }
);

/// Every relative link of the Markdown files (the README, ARCHITECTURE.md and the manual)
/// names a file that exists, and every `#anchor` into a Markdown file names a heading of it;
/// the manual's pages link only within `docs/`, which is all the built site holds.
#[test]
fn the_manual_has_no_broken_link() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut pages = vec![root.join("README.md"), root.join("ARCHITECTURE.md")];
    let mut folders = vec![root.join("docs")];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                pages.push(path);
            }
        }
    }
    let mut broken = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        for target in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let path = if file.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(file)
            };
            // The API reference page is written into the built site by `portcullis openapi --redoc`.
            if file == "api-reference.html" {
                continue;
            }
            let docs = root.join("docs");
            let leaves_the_site = page.starts_with(&docs)
                && path
                    .canonicalize()
                    .is_ok_and(|resolved| !resolved.starts_with(&docs));
            if !path.exists() {
                broken.push(format!("{}: {target}", page.display()));
            } else if leaves_the_site {
                broken.push(format!(
                    "{}: {target} (outside the manual's site)",
                    page.display()
                ));
            } else if !anchor.is_empty() && path.extension().is_some_and(|e| e == "md") {
                let headings = std::fs::read_to_string(&path).unwrap();
                if !anchors(&headings).iter().any(|a| a == anchor) {
                    broken.push(format!("{}: {target} (no such heading)", page.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The targets of `[text](target)` links outside code blocks and code spans.
fn links(markdown: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut in_code = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let outside_spans: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        let mut rest = outside_spans.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            found.push(after[..end].to_owned());
            rest = &after[end..];
        }
    }
    found
}

/// The anchors GitHub and mdBook give a page's headings.
fn anchors(markdown: &str) -> Vec<String> {
    markdown
        .lines()
        .filter(|line| line.starts_with('#'))
        .map(|line| {
            line.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .collect()
        })
        .collect()
}
