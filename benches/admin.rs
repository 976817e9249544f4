//! The admin API among a million users, on PostgreSQL: how long the first page, the 1,000th
//! page reached by cursor, an email-prefix search and a substring search take, and the query
//! plans behind them.
//!
//! Seeds `BENCH_USERS` users (default 1,000,000) in one `INSERT ... SELECT generate_series`
//! with a fixed hash (no bcrypt per user), starts the release binary, then sends each request
//! `BENCH_REPEATS` times (default 200) with nothing else running, and prints p50 and p99.
//! Run it with `cargo bench --bench admin`; `BENCH_POSTGRES_URL` as for the others.

use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, Database, DbBackend, Statement};
use serde_json::{Value, json};

#[path = "support/server.rs"]
mod server;

use server::{Result, SECRET, Server, on_fresh_postgres, percentile};

const PASSWORD: &str = "benchmark password 1";

async fn seed(database_url: &str, users: u64) -> Result<()> {
    let db = Database::connect(database_url).await?;
    let started = Instant::now();
    // A cost-4 bcrypt hash of nothing anyone types: the rows only need to look like users.
    db.execute_unprepared(&format!(
        "INSERT INTO users (email, email_normalized, email_key, full_name, password_hash, role, \
         is_active, email_verified, created_at, updated_at, credential_version) \
         SELECT 'user' || g || '@example' || (g % 97) || '.com', \
                'user' || g || '@example' || (g % 97) || '.com', \
                'seed:' || g, 'Person Number ' || g, \
                '$2b$04$C6UzMDM.H6dfI/f/IKcEeOJcD4Z9mC7mHo5d0vY1iQj5dQ0l0e7zO', \
                'user', g % 10 <> 0, g % 3 = 0, now() - (g || ' seconds')::interval, now(), 0 \
         FROM generate_series(1, {users}) AS g"
    ))
    .await?;
    // What autovacuum would have done by the time anyone searches.
    db.execute_unprepared("VACUUM ANALYZE users").await?;
    println!(
        "Seeded {users} users in {:.1} s (GIN trigram indexes included).",
        started.elapsed().as_secs_f64()
    );
    db.close().await?;
    Ok(())
}

async fn explain(database_url: &str, label: &str, sql: &str) -> Result<()> {
    let db = Database::connect(database_url).await?;
    let rows = db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            format!("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY ON) {sql}"),
        ))
        .await?;
    println!("\n{label}:\n```text");
    for row in rows {
        let line: String = row.try_get("", "QUERY PLAN")?;
        println!("{line}");
    }
    println!("```");
    db.close().await?;
    Ok(())
}

async fn time(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    repeats: usize,
) -> Result<(Duration, Duration, usize)> {
    let mut samples = Vec::with_capacity(repeats);
    let mut items = 0;
    for _ in 0..repeats {
        let started = Instant::now();
        let page: Value = client
            .get(url)
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await?;
        samples.push(started.elapsed());
        items = page["items"].as_array().map_or(0, Vec::len);
    }
    samples.sort_unstable();
    Ok((
        percentile(&samples, 50.0),
        percentile(&samples, 99.0),
        items,
    ))
}

async fn measure(database_url: String, users: u64, repeats: usize) -> Result<()> {
    // The server applies the migrations; then the rows go in under it.
    let server = Server::start(&database_url, &[]).await?;
    seed(&database_url, users).await?;
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["user", "create", "admin@bench.example", "--admin"])
        .env("PORTCULLIS_PROFILE", "production")
        .env("DATABASE_URL", &database_url)
        .env("SECRET_KEY", SECRET)
        .env("LOG_LEVEL", "error")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .map(|mut stdin| stdin.write_all(format!("{PASSWORD}\n").as_bytes()));
            child.wait()
        })?;
    if !status.success() {
        return Err("creating the admin failed".into());
    }
    let client = reqwest::Client::new();
    let base = server.base.clone();
    let tokens: Value = client
        .post(format!("{base}/auth/login"))
        .json(&json!({"email": "admin@bench.example", "password": PASSWORD}))
        .send()
        .await?
        .json()
        .await?;
    let token = tokens["access_token"]
        .as_str()
        .ok_or("no token")?
        .to_owned();

    // Walk to the 1,000th page by cursor.
    let mut cursor = String::new();
    for _ in 0..999 {
        let url = format!("{base}/admin/users?limit=50{cursor}");
        let page: Value = client
            .get(url)
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        let next = page["next_cursor"].as_str().ok_or("ran out of pages")?;
        cursor = format!("&cursor={next}");
    }
    let thousandth = format!("{base}/admin/users?limit=50{cursor}");
    let cases = [
        ("first page", format!("{base}/admin/users?limit=50")),
        ("1,000th page, by cursor", thousandth),
        (
            "email prefix (q=user424242)",
            format!("{base}/admin/users?q=user424242"),
        ),
        (
            "substring (q=mber 31337)",
            format!("{base}/admin/users?q=mber%2031337"),
        ),
        (
            "substring with filters (q=@example42, is_active, email_verified)",
            format!("{base}/admin/users?q=%40example42.com&is_active=true&email_verified=true"),
        ),
    ];
    println!("\n| request | items | p50 ms | p99 ms |");
    println!("|---|---:|---:|---:|");
    for (label, url) in &cases {
        let (p50, p99, items) = time(&client, url, &token, repeats).await?;
        println!(
            "| {label} | {items} | {:.2} | {:.2} |",
            p50.as_secs_f64() * 1000.0,
            p99.as_secs_f64() * 1000.0
        );
    }
    explain(
        &database_url,
        "Email prefix",
        "SELECT * FROM users WHERE (email_normalized LIKE '%user424242%' ESCAPE '\\' \
         OR lower(full_name) LIKE '%user424242%' ESCAPE '\\') ORDER BY id DESC LIMIT 50",
    )
    .await?;
    explain(
        &database_url,
        "Substring",
        "SELECT * FROM users WHERE (email_normalized LIKE '%mber 31337%' ESCAPE '\\' \
         OR lower(full_name) LIKE '%mber 31337%' ESCAPE '\\') ORDER BY id DESC LIMIT 50",
    )
    .await?;
    explain(
        &database_url,
        "1,000th page",
        "SELECT * FROM users WHERE id < 950000 ORDER BY id DESC LIMIT 50",
    )
    .await?;
    println!(
        "\nPeak resident memory of the server: {:.1} MiB.",
        server.memory().1
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let users: u64 = server::setting("BENCH_USERS", 1_000_000);
    let repeats: usize = server::setting("BENCH_REPEATS", 200);
    let postgres_url = server::postgres_admin_url();
    println!("# The admin API among {users} users (PostgreSQL)\n");
    println!(
        "Release build; client, server and database on this machine; {repeats} requests each."
    );
    on_fresh_postgres(&postgres_url, |url| measure(url, users, repeats)).await
}
