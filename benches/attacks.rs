//! The attacks of the outside review (issue 7), measured against the release binary with its
//! production settings (bcrypt cost 12, every abuse limit on), on SQLite and on PostgreSQL:
//!
//! 1. one signed-in token sends 100 wrong `current_password`s at once to `POST /auth/password`,
//!    while another user logs in;
//! 2. 20 wrong logins for one account at once: how many were checked (401) and how many met
//!    the failure delay (429), next to the same 20 sent one after another;
//! 4. one account logs in many times with 500-character user agents, then lists its sessions,
//!    four lists at once: entries, bytes, time and the server's memory. The per-account and
//!    per-address login limits are raised for this part only, as an attacker with many
//!    addresses and two weeks would get around them.
//!
//! Run it with `cargo bench --bench attacks`. Settings, all optional: `BENCH_POSTGRES_URL`
//! (default `TEST_DATABASE_URL`, else `postgres://postgres@127.0.0.1:5432/test`),
//! `BENCH_BACKENDS` (default `sqlite,postgres`), `BENCH_LOGINS` (default 300: the logins of
//! part 4).

use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::{Value, json};

#[path = "support/server.rs"]
mod server;

use server::{Result, Server};

const PASSWORD: &str = "benchmark password 1";

/// Statuses and problem details of `requests`, sent at once, and how long the last took.
async fn burst(requests: Vec<reqwest::RequestBuilder>) -> (Vec<(u16, String)>, Duration) {
    let started = Instant::now();
    let answers = join_all(requests.into_iter().map(|request| async move {
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or_default();
                (
                    status,
                    body["detail"].as_str().unwrap_or_default().to_owned(),
                )
            }
            Err(err) => (0, err.to_string()),
        }
    }))
    .await;
    (answers, started.elapsed())
}

/// `401 x 6, 429 x 14`, in status order.
fn tally(answers: &[(u16, String)]) -> String {
    let mut counts = std::collections::BTreeMap::new();
    for (status, detail) in answers {
        let label = if *status == 401 && !detail.is_empty() {
            format!("401 {detail}")
        } else {
            status.to_string()
        };
        *counts.entry(label).or_insert(0) += 1;
    }
    counts
        .iter()
        .map(|(label, n)| format!("{label} x {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn register(client: &reqwest::Client, base: &str, email: &str) -> Result<()> {
    let status = client
        .post(format!("{base}/auth/register"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await?
        .status();
    if !status.is_success() {
        return Err(format!("registering {email}: {status}").into());
    }
    Ok(())
}

fn login(
    client: &reqwest::Client,
    base: &str,
    email: &str,
    password: &str,
) -> reqwest::RequestBuilder {
    client
        .post(format!("{base}/auth/login"))
        .json(&json!({"email": email, "password": password}))
}

/// Findings 1 and 2, with the production limits.
async fn guessing(database_url: &str) -> Result<()> {
    let server = Server::start(database_url, &[]).await?;
    let base = server.base.clone();
    let client = reqwest::Client::new();

    register(&client, &base, "victim@example.com").await?;
    register(&client, &base, "bystander@example.com").await?;
    let stolen = server.access_token("victim@example.com", PASSWORD).await?;
    let guesses = (0..100)
        .map(|n| {
            client
                .post(format!("{base}/auth/password"))
                .bearer_auth(&stolen)
                .json(&json!({"current_password": format!("guess {n}"), "new_password": "whatever new one"}))
        })
        .collect();
    let bystander = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        let status = login(&client, &base, "bystander@example.com", PASSWORD)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        (status, started.elapsed())
    };
    let ((answers, took), (during_status, during)) = tokio::join!(burst(guesses), bystander);
    let started = Instant::now();
    let after_status = login(&client, &base, "bystander@example.com", PASSWORD)
        .send()
        .await?
        .status()
        .as_u16();
    let after = started.elapsed();
    println!(
        "| 1. 100 wrong current passwords at once from one token | {} | {:.1} s |",
        tally(&answers),
        took.as_secs_f64()
    );
    println!(
        "| 1. another user's login during that burst, and the next one | {during_status} in {:.0} ms; {after_status} in {:.0} ms | |",
        during.as_secs_f64() * 1000.0,
        after.as_secs_f64() * 1000.0
    );

    register(&client, &base, "target@example.com").await?;
    let guesses = (0..20)
        .map(|n| login(&client, &base, "target@example.com", &format!("guess {n}")))
        .collect();
    let (answers, took) = burst(guesses).await;
    println!(
        "| 2. 20 wrong logins for one account at once | {} | {:.1} s |",
        tally(&answers),
        took.as_secs_f64()
    );
    register(&client, &base, "sequential@example.com").await?;
    let mut sequential = Vec::new();
    for n in 0..20 {
        let response = login(
            &client,
            &base,
            "sequential@example.com",
            &format!("guess {n}"),
        )
        .send()
        .await?;
        sequential.push((response.status().as_u16(), String::new()));
    }
    println!(
        "| 2. the same 20, one after another | {} | |",
        tally(&sequential)
    );
    Ok(())
}

/// Finding 4: many sessions of one account, and its session list.
async fn sessions(database_url: &str, logins: usize) -> Result<()> {
    let server = Server::start(
        database_url,
        &[
            ("LOGIN_LIMIT_PER_ACCOUNT", "100000"),
            ("LOGIN_LIMIT_PER_IP", "100000"),
        ],
    )
    .await?;
    let base = server.base.clone();
    let client = reqwest::Client::new();
    register(&client, &base, "many@example.com").await?;
    let agent = "A".repeat(500);
    let started = Instant::now();
    let mut last = String::new();
    for chunk in (0..logins).collect::<Vec<_>>().chunks(8) {
        let requests = chunk.iter().map(|_| {
            login(&client, &base, "many@example.com", PASSWORD).header("user-agent", &agent)
        });
        for response in join_all(requests.map(reqwest::RequestBuilder::send)).await {
            let tokens: Value = response?.json().await?;
            if let Some(token) = tokens["access_token"].as_str() {
                last = token.to_owned();
            }
        }
    }
    let logged_in = started.elapsed();
    let (rss_before, _) = server.memory();
    let started = Instant::now();
    let lists = join_all((0..4).map(|_| {
        client
            .get(format!("{base}/auth/sessions"))
            .bearer_auth(&last)
            .send()
    }))
    .await;
    let mut sizes = Vec::new();
    for list in lists {
        let body = list?.bytes().await?;
        let entries = serde_json::from_slice::<Vec<Value>>(&body)?.len();
        sizes.push((entries, body.len()));
    }
    let listed = started.elapsed();
    let (rss_after, peak) = server.memory();
    println!(
        "| 4. {logins} logins with 500-character user agents (in {:.0} s), then 4 session lists at once | {} entries, {} bytes each, all 4 in {:.0} ms | RSS {rss_before:.1} MiB before, {rss_after:.1} MiB after, peak {peak:.1} MiB |",
        logged_in.as_secs_f64(),
        sizes.first().map_or(0, |s| s.0),
        sizes.first().map_or(0, |s| s.1),
        listed.as_secs_f64() * 1000.0,
    );
    Ok(())
}

async fn on_backend(name: &str, url: &str, logins: usize) -> Result<()> {
    println!("\n### {name}\n");
    println!("| attack | answers | time, memory |");
    println!("|---|---|---|");
    guessing(url).await?;
    sessions(url, logins).await
}

#[tokio::main]
async fn main() -> Result<()> {
    let logins: usize = server::setting("BENCH_LOGINS", 300);
    println!("# The attacks of issue 7, after the fixes\n");
    println!(
        "Release build, production profile, bcrypt cost 12, default limits (part 4 raises the login limits)."
    );
    server::on_each_backend(|name, url| async move { on_backend(name, &url, logins).await }).await
}
