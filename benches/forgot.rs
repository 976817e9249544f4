//! Does `POST /auth/password/forgot` tell registered addresses from others by its timing?
//!
//! Starts the release binary (production profile, mail to the log, the mail limits raised so
//! that a few hundred requests pass), prepares an active verified account, an unverified one
//! and an inactive one, then sends `forgot` for those three and for an unknown address in
//! turn, `BENCH_ROUNDS` times (default 300), and prints the median and p99 of each. Run it with
//! `cargo bench --bench forgot`; `BENCH_BACKENDS` and `BENCH_POSTGRES_URL` as for the others.

use std::process::Command;
use std::time::Instant;

use serde_json::json;

#[path = "support/server.rs"]
mod server;

use server::{Result, SECRET, Server, percentile};

const PASSWORD: &str = "benchmark password 1";

/// Runs an operator command on the server's database.
fn operator(database_url: &str, args: &[&str]) -> Result<()> {
    let status = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .env("PORTCULLIS_PROFILE", "production")
        .env("DATABASE_URL", database_url)
        .env("SECRET_KEY", SECRET)
        .env("LOG_LEVEL", "error")
        .stdout(std::process::Stdio::null())
        .status()?;
    if !status.success() {
        return Err(format!("portcullis {args:?} failed").into());
    }
    Ok(())
}

async fn measure(name: &str, database_url: &str, rounds: usize) -> Result<()> {
    let server = Server::start(
        database_url,
        &[
            ("MAIL_TRANSPORT", "log"),
            ("MAIL_LIMIT_PER_IP", "100000"),
            ("MAIL_LIMIT_PER_ACCOUNT", "100000"),
            ("REGISTER_LIMIT_PER_IP", "100000"),
        ],
    )
    .await?;
    let client = reqwest::Client::new();
    let base = server.base.clone();
    for email in [
        "active@example.com",
        "unverified@example.com",
        "inactive@example.com",
    ] {
        client
            .post(format!("{base}/auth/register"))
            .json(&json!({"email": email, "password": PASSWORD}))
            .send()
            .await?;
    }
    operator(database_url, &["user", "verify", "active@example.com"])?;
    operator(database_url, &["user", "verify", "inactive@example.com"])?;
    operator(
        database_url,
        &["user", "deactivate", "inactive@example.com"],
    )?;

    let classes = [
        ("known, active, verified", "active@example.com"),
        ("known, unverified", "unverified@example.com"),
        ("known, inactive", "inactive@example.com"),
        ("unknown", "nobody@example.com"),
    ];
    let mut timings = vec![Vec::with_capacity(rounds); classes.len()];
    let mut bodies = std::collections::BTreeSet::new();
    for _ in 0..rounds {
        for (i, (_, email)) in classes.iter().enumerate() {
            let started = Instant::now();
            let response = client
                .post(format!("{base}/auth/password/forgot"))
                .json(&json!({"email": email}))
                .send()
                .await?;
            let status = response.status().as_u16();
            let body = response.text().await?;
            timings[i].push(started.elapsed());
            bodies.insert((status, body));
        }
    }
    println!("\n### {name}\n");
    println!("| address | requests | median ms | p99 ms |");
    println!("|---|---:|---:|---:|");
    for ((label, _), samples) in classes.iter().zip(timings.iter_mut()) {
        samples.sort_unstable();
        println!(
            "| {label} | {} | {:.3} | {:.3} |",
            samples.len(),
            percentile(samples, 50.0).as_secs_f64() * 1000.0,
            percentile(samples, 99.0).as_secs_f64() * 1000.0
        );
    }
    println!(
        "\nDistinct answers (status and body) over all {} requests: {}. Peak resident memory: \
         {:.1} MiB.",
        rounds * classes.len(),
        bodies.len(),
        server.memory().1
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let rounds: usize = server::setting("BENCH_ROUNDS", 300);
    println!("# Timing of POST /auth/password/forgot by kind of address\n");
    println!(
        "Release build, production profile, mail to the log; requests in turn, one at a time."
    );
    server::on_each_backend(|name, url| async move { measure(name, &url, rounds).await }).await
}
