//! `portcullis import pyauth` of `BENCH_USERS` users (default 100,000): how long the release
//! binary takes from start to exit, into a SQLite file and into a fresh PostgreSQL database,
//! and how long a second run (nothing changed) takes.
//!
//! The source is pyauth's schema from its own migration (tests/fixtures/pyauth/schema.sql),
//! seeded in one `INSERT ... SELECT generate_series` with one cost-12 hash for every user.
//! Run it with `cargo bench --bench import`; `BENCH_POSTGRES_URL` as for the others.

use std::process::Command;
use std::time::Instant;

use sea_orm::{ConnectionTrait, Database};

// Only its databases: the import runs the binary itself, not a server.
#[allow(dead_code)]
#[path = "support/server.rs"]
mod server;

use server::{Result, SECRET, on_fresh_postgres};

const SCHEMA: &str = include_str!("../tests/fixtures/pyauth/schema.sql");

async fn seed(source: &str, users: u64) -> Result<()> {
    let db = Database::connect(source).await?;
    db.execute_unprepared(SCHEMA).await?;
    db.execute_unprepared(&format!(
        "INSERT INTO users (email, hashed_password, full_name, role, is_active) \
         SELECT 'user' || g || '@example.com', \
                '$2b$12$LhayLxezLhK1LhWvKxCyLOj0j1u.Kj0jZ0pEmm134uzrQlFvQJLF6', \
                'Person ' || g, CASE WHEN g % 50 = 0 THEN 'ADMIN' ELSE 'USER' END::userrole, \
                g % 10 <> 0 \
         FROM generate_series(1, {users}) AS g"
    ))
    .await?;
    db.close().await?;
    Ok(())
}

/// Runs the import into `target`; its wall time in seconds and its last line.
fn import(source: &str, target: &str) -> Result<(f64, String)> {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["import", "pyauth", "--from", source])
        .env("PORTCULLIS_PROFILE", "production")
        .env("DATABASE_URL", target)
        .env("SECRET_KEY", SECRET)
        .env("LOG_LEVEL", "warn")
        .output()?;
    let seconds = started.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned().into());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok((
        seconds,
        stdout.lines().last().unwrap_or_default().to_owned(),
    ))
}

async fn measure(source: &str, target: &str, name: &str) -> Result<()> {
    let (first, summary) = import(source, target)?;
    let (second, again) = import(source, target)?;
    println!("| {name} | {first:.1} s ({summary}) | {second:.1} s ({again}) |");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let users: u64 = server::setting("BENCH_USERS", 100_000);
    let admin_url = server::postgres_admin_url();
    println!("# Importing {users} pyauth users\n");
    let inner = admin_url.clone();
    on_fresh_postgres(&admin_url, |source| async move {
        seed(&source, users).await?;
        println!("| target | first run | second run |");
        println!("|---|---|---|");
        let dir = tempfile::tempdir()?;
        let sqlite = format!("sqlite://{}/import.db?mode=rwc", dir.path().display());
        measure(&source, &sqlite, "SQLite").await?;
        on_fresh_postgres(&inner, |target| async move {
            measure(&source, &target, "PostgreSQL").await
        })
        .await
    })
    .await
}
