//! How long the service takes from start to ready, and what the first logins cost after.
//!
//! For each backend, applies the migrations once (`portcullis migrate`), then starts the
//! release binary in the production profile (bcrypt cost 12) `BENCH_ROUNDS` times (default
//! 20) on that database, asking `GET /ready` every millisecond from the moment of the spawn;
//! the time to its first 200 is "ready". Right after, it sends two logins with a wrong
//! password: in turn, for an unknown email and for a registered one. The first login after a
//! start waits for the dummy hash (made beside serving, not before it), whichever the email, so
//! the two kinds must take as long as each other, first or second. Run it with `cargo bench --bench startup`;
//! `BENCH_BACKENDS` (default `sqlite,postgres`) and `BENCH_POSTGRES_URL` as for the others.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

#[path = "support/server.rs"]
mod server;

use server::{Result, SECRET, Server, percentile};

/// One login with a wrong password for `email`: its time, and that it was refused.
async fn failed_login(client: &reqwest::Client, base: &str, email: &str) -> Result<Duration> {
    let started = Instant::now();
    let response = client
        .post(format!("{base}/auth/login"))
        .json(&json!({"email": email, "password": "not the password"}))
        .send()
        .await?;
    let took = started.elapsed();
    if response.status() != 401 {
        return Err(format!("a wrong password for {email} got {}", response.status()).into());
    }
    Ok(took)
}

const UNKNOWN: &str = "nobody@example.com";
const KNOWN: &str = "someone@example.com";

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Runs `portcullis ARGS` on `database_url`, with `stdin`.
fn portcullis(database_url: &str, args: &[&str], stdin: &str) -> Result<()> {
    use std::io::Write as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .env("PORTCULLIS_PROFILE", "production")
        .env("DATABASE_URL", database_url)
        .env("SECRET_KEY", SECRET)
        .env("LOG_LEVEL", "error")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(stdin.as_bytes())?;
    if !child.wait()?.success() {
        return Err(format!("portcullis {args:?} failed").into());
    }
    Ok(())
}

async fn measure(name: &str, database_url: &str, rounds: usize) -> Result<()> {
    portcullis(database_url, &["migrate"], "")?;
    portcullis(
        database_url,
        &["user", "create", KNOWN],
        "a benchmark password 1\n",
    )?;
    let client = reqwest::Client::new();
    let mut ready = Vec::new();
    // [unknown, known] x [first, second] login after a start.
    let mut logins: [[Vec<Duration>; 2]; 2] = Default::default();
    for round in 0..rounds {
        // Limits off: the rounds' failed logins must not meet the quotas or the delay.
        let started = Instant::now();
        let server = Server::spawn(database_url, &[("RATE_LIMITS_ENABLED", "false")])?;
        server.wait_for("/ready", Duration::from_millis(1)).await?;
        ready.push(started.elapsed());
        let kind = round % 2;
        let email = [UNKNOWN, KNOWN][kind];
        for samples in &mut logins[kind] {
            samples.push(failed_login(&client, &server.base, email).await?);
        }
    }
    ready.sort();
    for samples in logins.iter_mut().flatten() {
        samples.sort();
    }
    println!("\n### {name}\n");
    println!("| | min | median | p90 | max |");
    println!("|---|---|---|---|---|");
    let [[unknown_first, unknown_second], [known_first, known_second]] = &logins;
    for (what, samples) in [
        ("start to ready", &ready),
        ("first login, unknown email", unknown_first),
        ("first login, registered email", known_first),
        ("second login, unknown email", unknown_second),
        ("second login, registered email", known_second),
    ] {
        println!(
            "| {what} (ms) | {:.0} | {:.0} | {:.0} | {:.0} |",
            ms(samples[0]),
            ms(percentile(samples, 50.0)),
            ms(percentile(samples, 90.0)),
            ms(samples[samples.len() - 1]),
        );
    }
    println!("\n{rounds} starts, migrations already applied; bcrypt cost 12; wrong passwords.");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let rounds: usize = server::setting("BENCH_ROUNDS", 20);
    println!("# Start-up: from spawn to ready, and the first logins after\n");
    println!("Release build, production profile.");
    server::on_each_backend(|name, url| async move { measure(name, &url, rounds).await }).await
}
