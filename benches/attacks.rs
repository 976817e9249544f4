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
//! And those of the second review (issue 20):
//!
//! 5. mail bombing: 24 accounts on 6 client addresses (through `X-Forwarded-For` from a
//!    trusted proxy) ask, three times each, to move to one victim's address; then 30
//!    registrations from one address: how many mails reach the victim, and how many
//!    verification mails go out, counted by an SMTP server in the benchmark;
//! 6. growth: 60 failed logins for unknown emails from one address with 500-character user
//!    agents (the per-address login budget of a minute): audit rows and bytes, and the
//!    extrapolation to a day; 60 passkey sign-in starts from one address, then one more once
//!    they expired: ceremony rows; mail given up and a week old: rows after the purge.
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
// The SMTP server the integration tests deliver to: it counts what arrives.
#[path = "../tests/api/smtp.rs"]
#[allow(dead_code)]
mod smtp;

use sea_orm::{ConnectionTrait, Database, Statement};
use server::{Result, Server};
use smtp::SmtpServer;

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

/// Mail to `to` that `smtp` received, once nothing more arrives for two seconds (the worker
/// looks every half second).
async fn mail_to(smtp: &SmtpServer, to: &str) -> usize {
    let count = || {
        smtp.received()
            .iter()
            .filter(|m| m.to.iter().any(|r| r.eq_ignore_ascii_case(to)))
            .count()
    };
    let mut seen = usize::MAX;
    while count() != seen {
        seen = count();
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    seen
}

/// The mail settings of part 5: SMTP to `smtp`, and the loopback trusted as a proxy.
fn mailing(smtp: &SmtpServer) -> Vec<(&'static str, String)> {
    vec![
        ("MAIL_TRANSPORT", "smtp".into()),
        ("SMTP_URL", smtp.url()),
        ("TRUSTED_PROXIES", "127.0.0.1".into()),
    ]
}

fn pairs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Finding 3 of the second review: one address flooded with mail.
async fn mail_bombing(database_url: &str) -> Result<()> {
    let smtp = SmtpServer::start().await;
    let env = mailing(&smtp);
    let server = Server::start(database_url, &pairs(&env)).await?;
    let base = server.base.clone();
    let client = reqwest::Client::new();
    register(&client, &base, "mailvictim@example.com").await?;
    let started = Instant::now();
    let mut asked = Vec::new();
    for n in 0..24 {
        let from = format!("198.51.100.{}", n % 6 + 1);
        let email = format!("attacker{n}@example.com");
        let status = client
            .post(format!("{base}/auth/register"))
            .header("x-forwarded-for", &from)
            .json(&json!({"email": email, "password": PASSWORD}))
            .send()
            .await?
            .status();
        if !status.is_success() {
            return Err(format!("registering {email}: {status}").into());
        }
        let tokens: Value = login(&client, &base, &email, PASSWORD)
            .header("x-forwarded-for", &from)
            .send()
            .await?
            .json()
            .await?;
        let token = tokens["access_token"]
            .as_str()
            .ok_or("no token")?
            .to_owned();
        for _ in 0..3 {
            asked.push(
                client
                    .post(format!("{base}/auth/email"))
                    .header("x-forwarded-for", &from)
                    .bearer_auth(&token)
                    .json(&json!({"new_email": "mailvictim@example.com", "current_password": PASSWORD})),
            );
        }
    }
    let (answers, _) = burst(asked).await;
    let took = started.elapsed();
    let victim = mail_to(&smtp, "mailvictim@example.com").await;
    println!(
        "| 5. 24 accounts on 6 addresses ask 3 times each, in {:.0} s, to move to the victim's address | {} | {victim} mails in the victim's box, its verification included |",
        took.as_secs_f64(),
        tally(&answers),
    );
    drop(server);

    let smtp = SmtpServer::start().await;
    let env = mailing(&smtp);
    let server = Server::start(database_url, &pairs(&env)).await?;
    let base = server.base.clone();
    let registered = (0..30)
        .map(|n| {
            client
                .post(format!("{base}/auth/register"))
                .header("x-forwarded-for", "203.0.113.50")
                .json(&json!({"email": format!("signup{n}@example.com"), "password": PASSWORD}))
        })
        .collect();
    let (answers, took) = burst(registered).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut sent = mail_to(&smtp, "signup0@example.com").await;
    sent = sent.max(smtp.received().len());
    println!(
        "| 5. 30 registrations from one address, in {:.0} ms | {} | {sent} verification mails (mail_limit_per_ip 10) |",
        took.as_secs_f64() * 1000.0,
        tally(&answers),
    );
    Ok(())
}

/// One number out of the database of `url`.
async fn scalar(url: &str, sql: &str) -> Result<i64> {
    let db = Database::connect(url).await?;
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await?
        .ok_or("no row")?;
    let value = row
        .try_get::<i64>("", "n")
        .or_else(|_| row.try_get::<i32>("", "n").map(i64::from))?;
    db.close().await?;
    Ok(value)
}

async fn execute(url: &str, sql: &str) -> Result<()> {
    let db = Database::connect(url).await?;
    db.execute_unprepared(sql).await?;
    db.close().await?;
    Ok(())
}

/// Finding 8 of the second review: what strangers' requests leave behind.
async fn growth(database_url: &str) -> Result<()> {
    // Passkeys need a host name for the relying party; the mail transport fails every
    // delivery, once.
    let env = [
        ("PUBLIC_URL", "http://localhost:8000"),
        ("MAIL_TRANSPORT", "smtp"),
        ("SMTP_URL", "smtp://127.0.0.1:9"),
        ("MAIL_MAX_ATTEMPTS", "1"),
        ("SESSION_PURGE_INTERVAL_SECONDS", "1"),
        ("TRUSTED_PROXIES", "127.0.0.1"),
    ];
    // One address of its own, apart from the earlier parts' failures on the same database.
    let from = "192.0.2.66";
    let server = Server::start(database_url, &env).await?;
    let base = server.base.clone();
    let client = reqwest::Client::new();
    let agent = "A".repeat(500);
    let failures = (0..60)
        .map(|n| {
            login(&client, &base, &format!("stranger{n}@example.com"), "guess")
                .header("user-agent", &agent)
                .header("x-forwarded-for", from)
        })
        .collect();
    let (answers, _) = burst(failures).await;
    let rows = scalar(
        database_url,
        "SELECT COUNT(*) AS n FROM audit_events WHERE kind = 'login.failed' \
         AND ip = '192.0.2.66'",
    )
    .await?;
    let bytes = scalar(
        database_url,
        "SELECT CAST(COALESCE(SUM(LENGTH(user_agent) + LENGTH(detail) + LENGTH(kind) + \
         LENGTH(ip) + 40), 0) AS BIGINT) AS n FROM audit_events WHERE kind = 'login.failed' \
         AND ip = '192.0.2.66'",
    )
    .await?;
    println!(
        "| 6. 60 failed logins for unknown emails from one address, 500-character user agents | {} | {rows} audit rows, {bytes} bytes: {:.2} MB a day per address at this rate |",
        tally(&answers),
        bytes as f64 * 1440.0 / 1e6,
    );

    let starts = (0..60)
        .map(|_| {
            client
                .post(format!("{base}/auth/passkeys/login/start"))
                .header("x-forwarded-for", "192.0.2.67")
        })
        .collect();
    let (answers, _) = burst(starts).await;
    let live = scalar(
        database_url,
        "SELECT COUNT(*) AS n FROM webauthn_ceremonies",
    )
    .await?;
    // Five minutes on, as far as the table can tell: the next start sweeps them.
    execute(
        database_url,
        "UPDATE webauthn_ceremonies SET expires_at = '2000-01-01 00:00:00+00'",
    )
    .await?;
    client
        .post(format!("{base}/auth/passkeys/login/start"))
        .header("x-forwarded-for", "203.0.113.77")
        .send()
        .await?;
    let after = scalar(
        database_url,
        "SELECT COUNT(*) AS n FROM webauthn_ceremonies",
    )
    .await?;
    println!(
        "| 6. 60 passkey sign-in starts from one address, then one more after they expired | {} | {live} ceremony rows, then {after} |",
        tally(&answers),
    );

    // The verification mail of a registration, which the transport fails for good.
    client
        .post(format!("{base}/auth/register"))
        .header("x-forwarded-for", "192.0.2.68")
        .json(&json!({"email": "undeliverable@example.com", "password": PASSWORD}))
        .send()
        .await?;
    let mut failed = 0;
    for _ in 0..50 {
        failed = scalar(
            database_url,
            "SELECT COUNT(*) AS n FROM mail_outbox WHERE state = 'failed'",
        )
        .await?;
        if failed > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    execute(
        database_url,
        "UPDATE mail_outbox SET queued_at = '2000-01-01 00:00:00+00'",
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let left = scalar(
        database_url,
        "SELECT COUNT(*) AS n FROM mail_outbox WHERE state = 'failed'",
    )
    .await?;
    println!(
        "| 6. a mail given up, then a week old | | {failed} failed job, {left} after the purge |"
    );
    Ok(())
}

async fn on_backend(name: &str, url: &str, logins: usize) -> Result<()> {
    println!("\n### {name}\n");
    println!("| attack | answers | time, memory |");
    println!("|---|---|---|");
    guessing(url).await?;
    sessions(url, logins).await?;
    mail_bombing(url).await?;
    growth(url).await
}

#[tokio::main]
async fn main() -> Result<()> {
    let logins: usize = server::setting("BENCH_LOGINS", 300);
    println!("# The attacks of issues 7 and 20, after the fixes\n");
    println!(
        "Release build, production profile, bcrypt cost 12, default limits (part 4 raises the login limits)."
    );
    server::on_each_backend(|name, url| async move { on_backend(name, &url, logins).await }).await
}
