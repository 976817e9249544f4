//! Load benchmark: starts the release binary on SQLite and on PostgreSQL, drives it over
//! loopback at several concurrencies after a warm-up, and prints one table.
//!
//! Run it with `cargo bench --bench load`. Settings, all optional:
//! - `BENCH_SECONDS` (default 5): how long each measurement runs, after 1 s of warm-up;
//! - `BENCH_POSTGRES_URL` (default `TEST_DATABASE_URL`, else
//!   `postgres://postgres@127.0.0.1:5432/test`): a server where the benchmark may create and
//!   drop a database; PostgreSQL is skipped, and says so, when it cannot connect;
//! - `BENCH_BACKENDS` (default `memory,sqlite,postgres`): the storages of the tables;
//! - the last table always runs servers on all three side by side and compares
//!   `/protected/user` on each database with in-memory storage, the reference for what the
//!   database costs (issue 14's target: at least 90%, which only the session cache reaches;
//!   `SESSION_CACHE=false` in the environment runs the servers without it);
//! - `BENCH_LOADS` (default `public,protected,login,register`): which request tables to run;
//!   the targets table needs all four.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

#[path = "support/server.rs"]
mod server;

use server::{Result, Server, on_fresh_postgres};

const PASSWORD: &str = "benchmark password 1";
const CONCURRENCIES: [usize; 3] = [1, 8, 32];

/// Latencies and counts of one measurement.
struct Sample {
    ok: u64,
    failed: u64,
    seconds: f64,
    latencies: Vec<Duration>,
}

impl Sample {
    fn rps(&self) -> f64 {
        self.ok as f64 / self.seconds
    }

    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
        sorted[rank]
    }
}

/// One kind of request.
#[derive(Clone)]
enum Load {
    Public,
    ProtectedUser(String),
    Login(String),
    Register(Arc<AtomicU64>),
}

impl Load {
    fn name(&self) -> &'static str {
        match self {
            Self::Public => "GET /public",
            Self::ProtectedUser(_) => "GET /protected/user",
            Self::Login(_) => "POST /auth/login",
            Self::Register(_) => "POST /auth/register",
        }
    }

    async fn send(&self, client: &reqwest::Client, base: &str) -> bool {
        let request = match self {
            Self::Public => client.get(format!("{base}/public")),
            Self::ProtectedUser(token) => client
                .get(format!("{base}/protected/user"))
                .bearer_auth(token),
            Self::Login(email) => client
                .post(format!("{base}/auth/login"))
                .json(&json!({"email": email, "password": PASSWORD})),
            Self::Register(counter) => {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                client
                    .post(format!("{base}/auth/register"))
                    .json(&json!({"email": format!("load{n}@example.com"), "password": PASSWORD}))
            }
        };
        matches!(request.send().await, Ok(r) if r.status().is_success())
    }
}

/// Drives `load` from `concurrency` clients: `warmup` unmeasured, then `duration` measured.
async fn drive(
    base: &str,
    load: &Load,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
) -> Sample {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .expect("client");
    let started = Instant::now();
    let measure_from = started + warmup;
    let until = measure_from + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, base, load) = (client.clone(), base.to_owned(), load.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed, mut latencies) = (0u64, 0u64, Vec::new());
                loop {
                    let sent = Instant::now();
                    if sent >= until {
                        break;
                    }
                    let success = load.send(&client, &base).await;
                    if sent >= measure_from {
                        if success {
                            ok += 1;
                            latencies.push(sent.elapsed());
                        } else {
                            failed += 1;
                        }
                    }
                }
                (ok, failed, latencies)
            })
        })
        .collect();
    let mut sample = Sample {
        ok: 0,
        failed: 0,
        seconds: duration.as_secs_f64(),
        latencies: Vec::new(),
    };
    for task in tasks {
        let (ok, failed, latencies) = task.await.expect("load task");
        sample.ok += ok;
        sample.failed += failed;
        sample.latencies.extend(latencies);
    }
    sample
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// The time of one bcrypt hash at the service's cost, best of five.
fn bcrypt_seconds(cost: u32) -> f64 {
    (0..5)
        .map(|_| {
            let started = Instant::now();
            bcrypt::hash(PASSWORD, cost).expect("bcrypt");
            started.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// The benchmark floods logins from one address into one account on purpose: no limits, and no
/// cap on the account's sessions (it would end the session whose token the protected-route
/// measurements use).
const UNLIMITED: [(&str, &str); 2] = [
    ("RATE_LIMITS_ENABLED", "false"),
    ("MAX_SESSIONS_PER_USER", "1000000"),
];

/// `/public` and `/protected/user` at 32 clients on a new instance with `algorithm` set.
async fn public_and_protected(
    database_url: &str,
    email: &str,
    algorithm: (&str, &str),
    warmup: Duration,
    duration: Duration,
) -> Result<(Sample, Sample)> {
    let server = Server::start(database_url, &[UNLIMITED[0], UNLIMITED[1], algorithm]).await?;
    let token = server.access_token(email, PASSWORD).await?;
    let public = drive(&server.base, &Load::Public, 32, warmup, duration).await;
    let user = drive(
        &server.base,
        &Load::ProtectedUser(token),
        32,
        warmup,
        duration,
    )
    .await;
    Ok((public, user))
}

/// Runs every table on one backend.
async fn bench_backend(
    name: &str,
    database_url: &str,
    seconds: u64,
    bcrypt_limit: f64,
) -> Result<()> {
    let server = Server::start(database_url, &UNLIMITED).await?;
    let (idle_rss, _) = server.memory();
    let client = reqwest::Client::new();
    let base = server.base.clone();
    let email = format!("bench-{}@example.com", std::process::id());
    client
        .post(format!("{base}/auth/register"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await?;
    let token = server.access_token(&email, PASSWORD).await?;

    let warmup = Duration::from_secs(1);
    let duration = Duration::from_secs(seconds);
    let wanted =
        std::env::var("BENCH_LOADS").unwrap_or_else(|_| "public,protected,login,register".into());
    let loads: Vec<Load> = [
        ("public", Load::Public),
        ("protected", Load::ProtectedUser(token.clone())),
        ("login", Load::Login(email.clone())),
        ("register", Load::Register(Arc::new(AtomicU64::new(0)))),
    ]
    .into_iter()
    .filter(|(key, _)| wanted.split(',').any(|w| w.trim() == *key))
    .map(|(_, load)| load)
    .collect();
    println!("\n### {name}\n");
    println!("| request | concurrency | req/s | p50 ms | p99 ms | failed |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut at_32 = std::collections::HashMap::new();
    for load in &loads {
        for concurrency in CONCURRENCIES {
            let sample = drive(&base, load, concurrency, warmup, duration).await;
            println!(
                "| {} | {concurrency} | {:.0} | {} | {} | {} |",
                load.name(),
                sample.rps(),
                ms(sample.percentile(50.0)),
                ms(sample.percentile(99.0)),
                sample.failed
            );
            if concurrency == 32 {
                at_32.insert(load.name(), sample.rps());
            }
        }
    }

    // /protected/user alone, then while a login flood keeps the hash pool saturated.
    let protected = Load::ProtectedUser(token);
    let alone = drive(&base, &protected, 8, warmup, duration).await;
    let flood_base = base.clone();
    let flood_load = Load::Login(email.clone());
    let flood = tokio::spawn(async move {
        drive(
            &flood_base,
            &flood_load,
            32,
            Duration::ZERO,
            warmup * 2 + duration,
        )
        .await
    });
    let during = drive(&base, &protected, 8, warmup, duration).await;
    let flood = flood.await?;
    let (_, peak_rss) = server.memory();
    drop(server);

    // HS256 against EdDSA: the two routes on a fresh instance of each, one after the other on
    // the same database as it now is, so that only the algorithm differs. In-memory storage
    // starts empty with each instance, so it has no such pair.
    let mut side_by_side = Vec::new();
    if database_url != "memory://" {
        for algorithm in ["HS256", "EdDSA"] {
            let setting = ("JWT_ALGORITHM", algorithm);
            let pair = public_and_protected(database_url, &email, setting, warmup, duration);
            side_by_side.push((algorithm, pair.await?));
        }
    }

    let public = at_32.get("GET /public").copied().unwrap_or(f64::NAN);
    let user = at_32
        .get("GET /protected/user")
        .copied()
        .unwrap_or(f64::NAN);
    let login = at_32.get("POST /auth/login").copied().unwrap_or(f64::NAN);
    println!();
    println!("| measure | value | target |");
    println!("|---|---:|---|");
    println!("| bcrypt limit (cores / one hash) | {bcrypt_limit:.1} logins/s | |");
    println!(
        "| /protected/user vs /public req/s at c=32 | {:.0}% | at least 40% |",
        100.0 * user / public
    );
    for (name, (public, user)) in &side_by_side {
        println!(
            "| /protected/user vs /public req/s at c=32, {name}, instances side by side ({:.0} vs {:.0} req/s, p99 {} ms) | {:.0}% | EdDSA within 10% of HS256 |",
            user.rps(),
            public.rps(),
            ms(user.percentile(99.0)),
            100.0 * user.rps() / public.rps()
        );
    }
    println!(
        "| login req/s at c=32 vs the bcrypt limit | {:.0}% | at least 90% |",
        100.0 * login / bcrypt_limit
    );
    println!(
        "| /protected/user p99 at c=8, alone | {} ms | |",
        ms(alone.percentile(99.0))
    );
    println!(
        "| /protected/user p99 at c=8, during a login flood (c=32, {:.1} logins/s, {} refused) | {} ms ({:.1}x) | at most 3x |",
        flood.rps(),
        flood.failed,
        ms(during.percentile(99.0)),
        during.percentile(99.0).as_secs_f64() / alone.percentile(99.0).as_secs_f64()
    );
    println!("| resident memory idle | {idle_rss:.1} MiB | |");
    println!("| resident memory peak | {peak_rss:.1} MiB | under 48 MiB |");
    Ok(())
}

/// Rounds of the side-by-side comparison of `/protected/user` across storages.
const COMPARE_ROUNDS: usize = 5;

/// `/protected/user` at 32 clients on in-memory storage, SQLite and PostgreSQL, servers side by
/// side, in turns: each storage's median rate, and its share of in-memory storage's.
async fn compare_protected(sqlite: String, postgres: String, seconds: u64) -> Result<()> {
    let storages = [
        ("in-memory storage", "memory://".to_owned()),
        ("SQLite", sqlite),
        ("PostgreSQL", postgres),
    ];
    let mut servers = Vec::new();
    for (name, url) in &storages {
        let server = Server::start(url, &UNLIMITED).await?;
        let email = "compare@example.com";
        reqwest::Client::new()
            .post(format!("{}/auth/register", server.base))
            .json(&json!({"email": email, "password": PASSWORD}))
            .send()
            .await?;
        let token = server.access_token(email, PASSWORD).await?;
        servers.push((*name, server, Load::ProtectedUser(token)));
    }
    let mut rates = vec![Vec::new(); servers.len()];
    for _ in 0..COMPARE_ROUNDS {
        for ((_, server, load), rates) in servers.iter().zip(&mut rates) {
            let sample = drive(
                &server.base,
                load,
                32,
                Duration::from_secs(1),
                Duration::from_secs(seconds),
            )
            .await;
            rates.push(sample.rps());
        }
    }
    let medians: Vec<f64> = rates
        .iter_mut()
        .map(|rates| {
            rates.sort_by(f64::total_cmp);
            rates[rates.len() / 2]
        })
        .collect();
    println!("| storage | median req/s | rounds | of in-memory | target |");
    println!("|---|---:|---|---:|---|");
    for (((name, _, _), median), rates) in servers.iter().zip(&medians).zip(&rates) {
        let rounds: Vec<String> = rates.iter().map(|rate| format!("{rate:.0}")).collect();
        println!(
            "| {name} | {median:.0} | {} | {:.0}% | at least 90% |",
            rounds.join(", "),
            100.0 * median / medians[0]
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let seconds: u64 = server::setting("BENCH_SECONDS", 5);
    let backends =
        std::env::var("BENCH_BACKENDS").unwrap_or_else(|_| "memory,sqlite,postgres".into());
    let postgres_url = server::postgres_admin_url();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let cost = 12;
    let hash = bcrypt_seconds(cost);
    let bcrypt_limit = cores as f64 / hash;

    println!("# Portcullis load benchmark\n");
    println!(
        "Machine: {cores} cores, {}; release build; bcrypt cost {cost}: {:.0} ms a hash; \
         {seconds} s per measurement after 1 s of warm-up; client and server on one machine.",
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(
                |c| c.lines().find(|l| l.starts_with("model name")).map(|l| l
                    .split(':')
                    .nth(1)
                    .unwrap_or("")
                    .trim()
                    .to_owned())
            )
            .unwrap_or_else(|| "unknown CPU".into()),
        hash * 1000.0
    );

    // Empty, only the comparison runs.
    for backend in backends.split(',').map(str::trim).filter(|b| !b.is_empty()) {
        match backend {
            "sqlite" => {
                let dir = tempfile::tempdir()?;
                let url = format!("sqlite://{}/bench.db?mode=rwc", dir.path().display());
                bench_backend("SQLite", &url, seconds, bcrypt_limit).await?;
            }
            // Not a deployment option for several instances: a reference for what storage costs.
            "memory" => {
                bench_backend("in-memory storage", "memory://", seconds, bcrypt_limit).await?;
            }
            "postgres" => {
                on_fresh_postgres(&postgres_url, |url| async move {
                    bench_backend("PostgreSQL", &url, seconds, bcrypt_limit).await
                })
                .await?;
            }
            other => return Err(format!("unknown backend {other:?}").into()),
        }
    }
    println!(
        "\n### GET /protected/user at c=32 against in-memory storage\n\nThe tables above ran one \
         after the other, minutes apart, on a shared machine whose speed drifts. For the \
         comparison, one server per storage runs at once (idle while another is measured), and \
         {COMPARE_ROUNDS} rounds take turns; the medians are compared.\n"
    );
    let dir = tempfile::tempdir()?;
    let sqlite = format!("sqlite://{}/compare.db?mode=rwc", dir.path().display());
    on_fresh_postgres(&postgres_url, |postgres| {
        compare_protected(sqlite, postgres, seconds)
    })
    .await?;
    Ok(())
}
