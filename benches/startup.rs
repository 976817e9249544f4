//! How long the service takes from start to ready, and what the first logins cost after.
//!
//! For each backend, applies the migrations once (`portcullis migrate`), then starts the
//! release binary in the production profile (bcrypt cost 12) `BENCH_ROUNDS` times (default
//! 20) on that database, asking `GET /ready` every millisecond from the moment of the spawn;
//! the time to its first 200 is "ready". Right after, it logs in an unknown email twice: the
//! first login must cost a full hash at the configured cost, like the second (the dummy hash
//! is made beside serving, not before it). Run it with `cargo bench --bench startup`;
//! `BENCH_BACKENDS` (default `sqlite,postgres`) and `BENCH_POSTGRES_URL` as for the others.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

#[path = "support/server.rs"]
mod server;

use server::{Result, SECRET, Server, percentile};

/// One unknown-email login: its time, and that it was refused as a wrong password would be.
async fn unknown_login(client: &reqwest::Client, base: &str) -> Result<Duration> {
    let started = Instant::now();
    let response = client
        .post(format!("{base}/auth/login"))
        .json(&json!({"email": "nobody@example.com", "password": "not a password"}))
        .send()
        .await?;
    let took = started.elapsed();
    if response.status() != 401 {
        return Err(format!("an unknown email got {}", response.status()).into());
    }
    Ok(took)
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

async fn measure(name: &str, database_url: &str, rounds: usize) -> Result<()> {
    let migrated = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("migrate")
        .env("PORTCULLIS_PROFILE", "production")
        .env("DATABASE_URL", database_url)
        .env("SECRET_KEY", SECRET)
        .env("LOG_LEVEL", "error")
        .status()?;
    if !migrated.success() {
        return Err("portcullis migrate failed".into());
    }
    let client = reqwest::Client::new();
    let (mut ready, mut first, mut second) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        // Limits off: twenty rounds of unknown-email logins must not meet the address's quota.
        let started = Instant::now();
        let server = Server::spawn(database_url, &[("RATE_LIMITS_ENABLED", "false")])?;
        server.wait_for("/ready", Duration::from_millis(1)).await?;
        ready.push(started.elapsed());
        first.push(unknown_login(&client, &server.base).await?);
        second.push(unknown_login(&client, &server.base).await?);
    }
    for samples in [&mut ready, &mut first, &mut second] {
        samples.sort();
    }
    println!("\n### {name}\n");
    println!("| | min | median | p90 | max |");
    println!("|---|---|---|---|---|");
    for (what, samples) in [
        ("start to ready (ms)", &ready),
        ("first unknown-email login (ms)", &first),
        ("second unknown-email login (ms)", &second),
    ] {
        println!(
            "| {what} | {:.0} | {:.0} | {:.0} | {:.0} |",
            ms(samples[0]),
            ms(percentile(samples, 50.0)),
            ms(percentile(samples, 90.0)),
            ms(samples[samples.len() - 1]),
        );
    }
    println!("\n{rounds} starts, migrations already applied; bcrypt cost 12.");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let rounds: usize = server::setting("BENCH_ROUNDS", 20);
    println!("# Start-up: from spawn to ready, and the first logins after\n");
    println!("Release build, production profile.");
    server::on_each_backend(|name, url| async move { measure(name, &url, rounds).await }).await
}
