//! The soak (issue 25): the release binary on PostgreSQL under a steady mixed load, sampled
//! every few seconds, to show that it can run for hours without growing. Each sample reads the
//! server's resident memory (`VmRSS`), its open file descriptors (`/proc/PID/fd`), the
//! database's connections (`pg_stat_activity` rows for the run's database, through an admin
//! connection of the benchmark's own), the machine's 1-minute load average, and the window's
//! requests, errors and p50/p99 latency. One line per sample goes to the output and to a CSV
//! under `target/soak/` (the path is printed first).
//!
//! The load is open loop per task: each task sends at a fixed pace (a tick per request; a slow
//! answer delays the next tick, it never makes a burst), well below saturation, so a p99 means
//! something. Three kinds of task run together:
//! - journeys: each runs an account's whole life from a client address of its own, then starts
//!   the next account: register, verify the address from the mailed link, log in, read
//!   (`/auth/me`, `/protected/user`), refresh, log in elsewhere, list the sessions and end the
//!   first, change the password, enrol TOTP and remove it, forget the password and reset it from
//!   the mailed link, log in again, log out, and the refusals each of these must cause;
//! - readers: a signed-in user reading at a steady rate, refreshing (rotating) every minute;
//! - an admin: lists users and the audit trail, promotes the newest user and demotes them again.
//!
//! The abuse limits stay on (in the database, as in production), and the load stays inside
//! them: every journey has its own client address (through `X-Forwarded-For` from a trusted
//! loopback proxy) and the recipient's mail budget is raised to the four messages a journey
//! causes. Mail goes over SMTP to a small server in the benchmark, which forgets each journey's
//! messages at its end. bcrypt runs at cost 10, the cheapest production allows. The purge runs
//! every minute, so that what it deletes does not pile up during the run.
//!
//! The verdict, from the samples after the warm-up; the benchmark exits non-zero when any fails:
//! - memory: the median of the last 3 samples is less than 10% above the median of the first 3;
//! - descriptors: max - min within the pool's size plus one per load task plus 2: the only
//!   descriptors that may come and go are database connections (the pool opens and closes them
//!   between 0 and its size), the load's kept-alive HTTP connections (at most one per task) and
//!   the SMTP client's pooled connections;
//! - database connections: max - min within the pool's size, and never more than the pool plus
//!   the session cache's listener;
//! - p99: every later full minute's p99 is at most 1.5 times the first minute's after warm-up;
//! - errors: none in the whole run (a status other than the expected one, a transport error, or
//!   a mail that did not arrive within 30 s).
//!
//! Run it with `cargo bench --bench soak` (5 minutes), or `SOAK_MINUTES=30 cargo bench --bench
//! soak` for the full soak. Settings, all optional:
//! - `SOAK_MINUTES` (default 5): how long the load runs, warm-up included;
//! - `SOAK_SAMPLE_SECONDS` (default 5): the sample period;
//! - `SOAK_WARMUP_SECONDS` (default 60): samples before this are printed but not judged;
//! - `SOAK_JOURNEYS` (default 3): journeys at once, each at 4 requests a second;
//! - `SOAK_READERS` (default 2): readers, each at 10 requests a second;
//! - `BENCH_POSTGRES_URL`, as for the other benchmarks.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Method, RequestBuilder};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, Statement};
use serde_json::{Value, json};
use tokio::time::MissedTickBehavior;

#[path = "support/server.rs"]
mod server;
// The SMTP server the integration tests deliver to.
#[path = "../tests/api/smtp.rs"]
#[allow(dead_code)]
mod smtp;

use server::{
    Result, Server, on_fresh_postgres, percentile, postgres_admin_url, promote, setting, totp_code,
};
use smtp::SmtpServer;

const PASSWORD: &str = "soak password one";
const CHANGED: &str = "soak password two";
const RESET: &str = "soak password three";

/// Requests a second of one task of each kind.
const JOURNEY_RATE: f64 = 4.0;
const READER_RATE: f64 = 10.0;
const ADMIN_RATE: f64 = 1.0;
/// How often readers and the admin rotate their refresh token.
const REFRESH_EVERY: Duration = Duration::from_secs(60);
/// The longest a mailed link may take to arrive (the worker looks every half second).
const MAIL_WAIT: Duration = Duration::from_secs(30);
/// The server's connection pool, set here so that the verdict knows it.
const POOL: usize = 10;

const MEMORY_GROWTH_LIMIT: f64 = 0.10;
const P99_LIMIT: f64 = 1.5;

struct Settings {
    minutes: u64,
    sample: Duration,
    warmup: Duration,
    journeys: usize,
    readers: usize,
}

impl Settings {
    fn from_env() -> Self {
        Self {
            minutes: setting("SOAK_MINUTES", 5),
            sample: Duration::from_secs(setting("SOAK_SAMPLE_SECONDS", 5)),
            warmup: Duration::from_secs(setting("SOAK_WARMUP_SECONDS", 60)),
            journeys: setting("SOAK_JOURNEYS", 3),
            readers: setting("SOAK_READERS", 2),
        }
    }

    fn samples(&self) -> usize {
        (self.minutes * 60 / self.sample.as_secs().max(1)) as usize
    }

    fn warmup_samples(&self) -> usize {
        (self.warmup.as_secs() / self.sample.as_secs().max(1)) as usize
    }

    fn offered_rate(&self) -> f64 {
        self.journeys as f64 * JOURNEY_RATE + self.readers as f64 * READER_RATE + ADMIN_RATE
    }

    fn tasks(&self) -> usize {
        self.journeys + self.readers + 1
    }
}

/// One answered (or failed) request.
struct Call {
    kind: &'static str,
    took: Duration,
    error: Option<String>,
}

/// What the load tasks saw since the last sample.
#[derive(Default)]
struct Window(Mutex<Vec<Call>>);

impl Window {
    fn record(&self, call: Call) {
        self.0.lock().expect("window").push(call);
    }

    fn take(&self) -> Vec<Call> {
        std::mem::take(&mut *self.0.lock().expect("window"))
    }
}

/// What every load task shares: the server's address, one HTTP client, the mail server.
struct Load {
    base: String,
    client: reqwest::Client,
    smtp: SmtpServer,
    window: Window,
    accounts: AtomicU64,
}

impl Load {
    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, format!("{}{path}", self.base))
    }

    /// A new account's email and its client address (the limits count per address, so each
    /// account's life comes from an address of its own).
    fn next_account(&self, kind: &str) -> (String, String) {
        let n = self.accounts.fetch_add(1, Ordering::Relaxed);
        let ip = format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255);
        (format!("{kind}{n}@soak.example"), ip)
    }

    /// The token of the link to `path` in the mail to `to` about `subject`.
    async fn mailed_token(&self, to: &str, subject: &str, path: &str) -> Option<String> {
        let started = Instant::now();
        // `wait_for_subject` panics when nothing arrives in time, which would end the task
        // silently; the shorter timeout around it turns that into an error of the run.
        let mail = tokio::time::timeout(
            MAIL_WAIT,
            self.smtp.wait_for_subject(to, subject, MAIL_WAIT * 2),
        )
        .await;
        let token = mail.ok().and_then(|mail| mail.token(path));
        if token.is_none() {
            self.window.record(Call {
                kind: "mail",
                took: started.elapsed(),
                error: Some(format!("no {subject:?} to {to} within {MAIL_WAIT:?}")),
            });
        }
        token
    }
}

/// One load task: its pace and its client address.
struct Pace {
    load: Arc<Load>,
    ticks: tokio::time::Interval,
    ip: String,
}

impl Pace {
    fn new(load: Arc<Load>, per_second: f64) -> Self {
        let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second));
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            load,
            ticks,
            ip: "127.0.0.1".into(),
        }
    }

    /// At the next tick, sends `request` as `kind` from this task's address and records how
    /// long it took and whether it got `expected`. The answer's JSON body (`Null` when it has
    /// none), or `None` for any other answer.
    async fn send(
        &mut self,
        kind: &'static str,
        request: RequestBuilder,
        expected: u16,
    ) -> Option<Value> {
        self.ticks.tick().await;
        let started = Instant::now();
        let answer = async {
            let response = request.header("x-forwarded-for", &self.ip).send().await?;
            let status = response.status().as_u16();
            Ok::<_, reqwest::Error>((status, response.bytes().await?))
        }
        .await;
        let took = started.elapsed();
        let (body, error) = match answer {
            Ok((status, body)) if status == expected => (
                Some(serde_json::from_slice(&body).unwrap_or(Value::Null)),
                None,
            ),
            Ok((status, body)) => (
                None,
                Some(format!(
                    "{kind}: {status} (expected {expected}) {}",
                    String::from_utf8_lossy(&body)
                )),
            ),
            Err(err) => (None, Some(format!("{kind}: {err}"))),
        };
        self.load.window.record(Call { kind, took, error });
        body
    }

    fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> RequestBuilder {
        let mut request = self.load.request(method, path);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        request
    }

    async fn get(
        &mut self,
        kind: &'static str,
        path: &str,
        token: &str,
        expected: u16,
    ) -> Option<Value> {
        let request = self.call(Method::GET, path, Some(token), None);
        self.send(kind, request, expected).await
    }

    async fn post(
        &mut self,
        kind: &'static str,
        path: &str,
        token: Option<&str>,
        body: Value,
        expected: u16,
    ) -> Option<Value> {
        let request = self.call(Method::POST, path, token, Some(body));
        self.send(kind, request, expected).await
    }

    async fn register(&mut self, email: &str) -> Option<Value> {
        let body = json!({"email": email, "password": PASSWORD});
        self.post("POST /auth/register", "/auth/register", None, body, 201)
            .await
    }

    /// Logs in: the access and the refresh token.
    async fn login(&mut self, email: &str, password: &str) -> Option<Tokens> {
        let body = json!({"email": email, "password": password});
        Tokens::of(
            self.post("POST /auth/login", "/auth/login", None, body, 200)
                .await?,
        )
    }

    async fn refresh(&mut self, tokens: &Tokens) -> Option<Tokens> {
        let body = json!({"refresh_token": tokens.refresh});
        Tokens::of(
            self.post("POST /auth/refresh", "/auth/refresh", None, body, 200)
                .await?,
        )
    }

    /// One account's life, from registration to logout; `None` as soon as a step fails (the
    /// failure is recorded), and the next journey starts.
    async fn journey(&mut self, email: &str) -> Option<()> {
        let load = Arc::clone(&self.load);
        self.register(email).await?;
        let token = load
            .mailed_token(email, "Confirm your email address", "/console/verify")
            .await?;
        self.post(
            "POST /auth/verify",
            "/auth/verify",
            None,
            json!({"token": token}),
            200,
        )
        .await?;
        let first = self.login(email, PASSWORD).await?;
        self.get("GET /auth/me", "/auth/me", &first.access, 200)
            .await?;
        self.get("GET /protected/user", "/protected/user", &first.access, 200)
            .await?;
        let first = self.refresh(&first).await?;
        self.get("GET /protected/user", "/protected/user", &first.access, 200)
            .await?;

        let second = self.login(email, PASSWORD).await?;
        let sessions = self
            .get("GET /auth/sessions", "/auth/sessions", &second.access, 200)
            .await?;
        let other = sessions
            .as_array()?
            .iter()
            .find(|session| session["current"] == false)?["id"]
            .as_str()?
            .to_owned();
        let request = self.call(
            Method::DELETE,
            &format!("/auth/sessions/{other}"),
            Some(&second.access),
            None,
        );
        self.send("DELETE /auth/sessions/{id}", request, 204)
            .await?;
        self.get(
            "GET /auth/me (ended session)",
            "/auth/me",
            &first.access,
            401,
        )
        .await?;

        let change = json!({"current_password": PASSWORD, "new_password": CHANGED});
        self.post(
            "POST /auth/password",
            "/auth/password",
            Some(&second.access),
            change,
            204,
        )
        .await?;
        self.get(
            "GET /protected/user",
            "/protected/user",
            &second.access,
            200,
        )
        .await?;

        let enrolment = self
            .post(
                "POST /auth/mfa/totp",
                "/auth/mfa/totp",
                Some(&second.access),
                json!({"current_password": CHANGED}),
                200,
            )
            .await?;
        let code = totp_code(enrolment["secret"].as_str()?)?;
        self.post(
            "POST /auth/mfa/totp/confirm",
            "/auth/mfa/totp/confirm",
            Some(&second.access),
            json!({"code": code}),
            200,
        )
        .await?;
        let request = self.call(
            Method::DELETE,
            "/auth/mfa/totp",
            Some(&second.access),
            Some(json!({"password": CHANGED})),
        );
        self.send("DELETE /auth/mfa/totp", request, 204).await?;

        self.post(
            "POST /auth/password/forgot",
            "/auth/password/forgot",
            None,
            json!({"email": email}),
            202,
        )
        .await?;
        let token = load
            .mailed_token(email, "Reset your password", "/console/reset")
            .await?;
        let reset = json!({"token": token, "new_password": RESET});
        self.post(
            "POST /auth/password/reset",
            "/auth/password/reset",
            None,
            reset,
            204,
        )
        .await?;
        self.get(
            "GET /auth/me (after reset)",
            "/auth/me",
            &second.access,
            401,
        )
        .await?;

        let last = self.login(email, RESET).await?;
        self.get("GET /auth/me", "/auth/me", &last.access, 200)
            .await?;
        self.post(
            "POST /auth/logout",
            "/auth/logout",
            Some(&last.access),
            json!({}),
            204,
        )
        .await?;
        self.get(
            "GET /protected/user (logged out)",
            "/protected/user",
            &last.access,
            401,
        )
        .await?;
        Some(())
    }
}

/// An access token and its refresh token.
struct Tokens {
    access: String,
    refresh: String,
}

impl Tokens {
    fn of(body: Value) -> Option<Self> {
        Some(Self {
            access: body["access_token"].as_str()?.to_owned(),
            refresh: body["refresh_token"].as_str()?.to_owned(),
        })
    }
}

async fn journeys(load: Arc<Load>) {
    let mut pace = Pace::new(Arc::clone(&load), JOURNEY_RATE);
    loop {
        let (email, ip) = load.next_account("journey");
        pace.ip = ip;
        let _ = pace.journey(&email).await;
        load.smtp.forget(&email);
    }
}

/// A signed-in user who reads, and rotates the refresh token every minute. Signs in again
/// when a step fails.
async fn reader(load: Arc<Load>) {
    let mut pace = Pace::new(Arc::clone(&load), READER_RATE);
    let (email, ip) = load.next_account("reader");
    pace.ip = ip;
    if pace.register(&email).await.is_none() {
        return;
    }
    loop {
        let Some(mut tokens) = pace.login(&email, PASSWORD).await else {
            continue;
        };
        let mut refreshed = Instant::now();
        loop {
            let read = if refreshed.elapsed() >= REFRESH_EVERY {
                refreshed = Instant::now();
                pace.refresh(&tokens).await.map(|new| tokens = new)
            } else {
                pace.get(
                    "GET /protected/user",
                    "/protected/user",
                    &tokens.access,
                    200,
                )
                .await
                .map(drop)
            };
            if read.is_none() {
                break;
            }
        }
    }
}

/// The admin: lists users and the audit trail, promotes the newest user and demotes them again.
async fn admin(load: Arc<Load>, mut tokens: Tokens) {
    let mut pace = Pace::new(load, ADMIN_RATE);
    let mut refreshed = Instant::now();
    loop {
        if refreshed.elapsed() >= REFRESH_EVERY {
            refreshed = Instant::now();
            match pace.refresh(&tokens).await {
                Some(new) => tokens = new,
                // Without a token the admin can do nothing more; the error is recorded.
                None => return,
            }
        }
        let token = tokens.access.clone();
        pace.get("GET /admin/users", "/admin/users?limit=50", &token, 200)
            .await;
        pace.get("GET /admin/audit", "/admin/audit?limit=50", &token, 200)
            .await;
        let newest = pace
            .get(
                "GET /admin/users?role=user",
                "/admin/users?role=user&limit=1",
                &token,
                200,
            )
            .await;
        let Some(id) = newest.and_then(|page| page["items"][0]["id"].as_i64()) else {
            continue;
        };
        for role in ["admin", "user"] {
            let request = pace.call(
                Method::PATCH,
                &format!("/admin/users/{id}"),
                Some(&token),
                Some(json!({"role": role})),
            );
            pace.send("PATCH /admin/users/{id} role", request, 200)
                .await;
        }
    }
}

/// What one sample read.
struct Sample {
    /// Nominal seconds since the load started.
    at: u64,
    rss_mib: f64,
    descriptors: usize,
    connections: i64,
    load1: f64,
    calls: Vec<Call>,
}

impl Sample {
    fn errors(&self) -> usize {
        self.calls.iter().filter(|c| c.error.is_some()).count()
    }
}

/// Sorted latencies of `calls`.
fn latencies<'a>(calls: impl Iterator<Item = &'a Call>) -> Vec<Duration> {
    let mut all: Vec<Duration> = calls.map(|c| c.took).collect();
    all.sort_unstable();
    all
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The p50 and p99 in ms, or zeros for an empty window.
fn p50_p99(sorted: &[Duration]) -> (f64, f64) {
    if sorted.is_empty() {
        return (0.0, 0.0);
    }
    (ms(percentile(sorted, 50.0)), ms(percentile(sorted, 99.0)))
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Rows of `pg_stat_activity` for the database `name`: every connection to it, whoever holds it.
async fn connections(admin: &DatabaseConnection, name: &str) -> Result<i64> {
    let row = admin
        .query_one_raw(Statement::from_sql_and_values(
            admin.get_database_backend(),
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = $1",
            [name.into()],
        ))
        .await?
        .ok_or("pg_stat_activity gave no row")?;
    Ok(row.try_get("", "n")?)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// One line of the verdict.
struct Check {
    figure: &'static str,
    value: String,
    limit: String,
    passed: bool,
}

/// The checks of the samples after warm-up (`measured`) and of the whole run (`all`).
fn verdict(settings: &Settings, measured: &[Sample], all: &[Sample]) -> Vec<Check> {
    let rss: Vec<f64> = measured.iter().map(|s| s.rss_mib).collect();
    let first = median(rss[..3].to_vec());
    let last = median(rss[rss.len() - 3..].to_vec());
    let growth = (last - first) / first;

    let spread = |values: Vec<i64>| {
        let min = values.iter().copied().min().unwrap_or_default();
        let max = values.iter().copied().max().unwrap_or_default();
        (min, max)
    };
    let (fd_min, fd_max) = spread(measured.iter().map(|s| s.descriptors as i64).collect());
    let fd_tolerance = (POOL + settings.tasks() + 2) as i64;
    let (db_min, db_max) = spread(measured.iter().map(|s| s.connections).collect());

    let minutes = per_minute_p99(settings, measured);
    let baseline = minutes.first().copied().unwrap_or(f64::NAN);
    let worst = minutes.iter().skip(1).copied().fold(0.0_f64, f64::max);
    let later: Vec<String> = minutes.iter().skip(1).map(|p| format!("{p:.0}")).collect();

    let requests: usize = all.iter().map(|s| s.calls.len()).sum();
    let errors: usize = all.iter().map(Sample::errors).sum();
    vec![
        Check {
            figure: "resident memory (median of first 3 -> last 3 samples after warm-up)",
            value: format!("{first:.1} -> {last:.1} MiB ({:+.1}%)", growth * 100.0),
            limit: format!("< {:+.0}%", MEMORY_GROWTH_LIMIT * 100.0),
            passed: growth < MEMORY_GROWTH_LIMIT,
        },
        Check {
            figure: "open file descriptors (min - max)",
            value: format!("{fd_min} - {fd_max} (spread {})", fd_max - fd_min),
            limit: format!("spread <= {fd_tolerance}"),
            passed: fd_max - fd_min <= fd_tolerance,
        },
        Check {
            figure: "database connections (min - max)",
            value: format!("{db_min} - {db_max} (spread {})", db_max - db_min),
            limit: format!("spread <= {POOL}, max <= {}", POOL + 1),
            passed: db_max - db_min <= POOL as i64 && db_max <= POOL as i64 + 1,
        },
        Check {
            figure: "p99 per minute after warm-up (first; later), ms",
            value: format!(
                "{baseline:.0}; {} (worst {:.2}x)",
                later.join(", "),
                worst / baseline
            ),
            limit: format!("<= {P99_LIMIT}x the first"),
            passed: minutes.len() >= 2 && worst <= P99_LIMIT * baseline,
        },
        Check {
            figure: "errors (whole run)",
            value: format!("{errors} of {requests} requests"),
            limit: "0".into(),
            passed: errors == 0,
        },
    ]
}

/// The p99 in ms of each full minute of `measured`, by the samples' nominal times.
fn per_minute_p99(settings: &Settings, measured: &[Sample]) -> Vec<f64> {
    let start = settings.warmup.as_secs();
    let full = (measured.last().map_or(start, |s| s.at) - start) / 60;
    (0..full)
        .map(|minute| {
            let sorted = latencies(
                measured
                    .iter()
                    .filter(|s| (s.at - start - 1) / 60 == minute)
                    .flat_map(|s| s.calls.iter()),
            );
            p50_p99(&sorted).1
        })
        .collect()
}

/// Count, p50, p99 and errors of each kind of request after warm-up.
fn by_kind(measured: &[Sample]) -> String {
    let mut kinds: std::collections::BTreeMap<&str, Vec<&Call>> = Default::default();
    for call in measured.iter().flat_map(|s| s.calls.iter()) {
        kinds.entry(call.kind).or_default().push(call);
    }
    let mut table =
        String::from("| request | count | p50 ms | p99 ms | errors |\n|---|---:|---:|---:|---:|\n");
    for (kind, calls) in kinds {
        let (p50, p99) = p50_p99(&latencies(calls.iter().copied()));
        let errors = calls.iter().filter(|c| c.error.is_some()).count();
        let _ = writeln!(
            table,
            "| {kind} | {} | {p50:.1} | {p99:.1} | {errors} |",
            calls.len()
        );
    }
    table
}

fn csv_path() -> Result<PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .ok_or("no target folder")?
        .join("soak");
    std::fs::create_dir_all(&dir)?;
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    Ok(dir.join(format!("soak-{}.csv", stamp.as_secs())))
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    format!("{cores} cores ({cpu})")
}

async fn soak(
    settings: &Settings,
    db_admin: &DatabaseConnection,
    database_url: String,
) -> Result<()> {
    let (_, name) = database_url.rsplit_once('/').ok_or("no database name")?;

    let smtp = SmtpServer::start().await;
    let pool = POOL.to_string();
    let env = [
        ("TRUSTED_PROXIES", "127.0.0.1"),
        ("MAIL_TRANSPORT", "smtp"),
        ("SMTP_URL", &smtp.url()),
        ("MAIL_LIMIT_PER_RECIPIENT", "4"),
        ("BCRYPT_COST", "10"),
        ("DATABASE_MAX_CONNECTIONS", &pool),
        ("SESSION_PURGE_INTERVAL_SECONDS", "60"),
    ];
    let server = Server::start(&database_url, &env).await?;
    let load = Arc::new(Load {
        base: server.base.clone(),
        // The server closes a kept-alive connection after 10 s idle (`header_read_timeout`);
        // dropping idle ones sooner keeps the client from reusing one the server is closing.
        client: reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()?,
        smtp,
        window: Window::default(),
        accounts: AtomicU64::new(0),
    });

    let mut setup = Pace::new(Arc::clone(&load), 100.0);
    setup
        .register("admin@soak.example")
        .await
        .ok_or("registering the admin")?;
    promote(&database_url, "admin@soak.example")?;
    let admin_tokens = setup
        .login("admin@soak.example", PASSWORD)
        .await
        .ok_or("the admin's login")?;

    let csv_path = csv_path()?;
    let mut csv = std::fs::File::create(&csv_path)?;
    writeln!(
        csv,
        "seconds,phase,rss_mib,descriptors,db_connections,requests,errors,requests_per_second,p50_ms,p99_ms,load1"
    )?;
    println!("CSV: {}\n", csv_path.display());
    println!(
        "{:>6} {:>8} {:>8} {:>5} {:>4} {:>6} {:>4} {:>7} {:>8} {:>8} {:>6}",
        "s", "phase", "rss MiB", "fds", "db", "reqs", "errs", "req/s", "p50 ms", "p99 ms", "load1"
    );

    let mut tasks = Vec::new();
    for _ in 0..settings.journeys {
        tasks.push(tokio::spawn(journeys(Arc::clone(&load))));
    }
    for _ in 0..settings.readers {
        tasks.push(tokio::spawn(reader(Arc::clone(&load))));
    }
    tasks.push(tokio::spawn(admin(Arc::clone(&load), admin_tokens)));
    // The setup's own requests are not part of the load.
    load.window.take();

    let mut ticks = tokio::time::interval(settings.sample);
    ticks.tick().await;
    let mut samples = Vec::with_capacity(settings.samples());
    for n in 1..=settings.samples() {
        ticks.tick().await;
        let calls = load.window.take();
        let sample = Sample {
            at: n as u64 * settings.sample.as_secs(),
            rss_mib: server.memory().0,
            descriptors: server.descriptors()?,
            connections: connections(db_admin, name).await?,
            load1: load_average(),
            calls,
        };
        let phase = if n <= settings.warmup_samples() {
            "warm-up"
        } else {
            "measured"
        };
        let (p50, p99) = p50_p99(&latencies(sample.calls.iter()));
        let rate = sample.calls.len() as f64 / settings.sample.as_secs_f64();
        println!(
            "{:>6} {phase:>8} {:>8.1} {:>5} {:>4} {:>6} {:>4} {rate:>7.1} {p50:>8.1} {p99:>8.1} {:>6.2}",
            sample.at,
            sample.rss_mib,
            sample.descriptors,
            sample.connections,
            sample.calls.len(),
            sample.errors(),
            sample.load1,
        );
        writeln!(
            csv,
            "{},{phase},{:.2},{},{},{},{},{rate:.2},{p50:.2},{p99:.2},{:.2}",
            sample.at,
            sample.rss_mib,
            sample.descriptors,
            sample.connections,
            sample.calls.len(),
            sample.errors(),
            sample.load1,
        )?;
        for call in &sample.calls {
            if let Some(error) = &call.error {
                println!("       error: {error}");
            }
        }
        samples.push(sample);
    }
    for task in &tasks {
        task.abort();
    }

    let (_, peak) = server.memory();
    let measured = &samples[settings.warmup_samples().min(samples.len())..];
    if measured.len() < 6 {
        return Err("too few samples after the warm-up to judge: run longer".into());
    }
    let requests: usize = measured.iter().map(|s| s.calls.len()).sum();
    let seconds = measured.len() as f64 * settings.sample.as_secs_f64();
    let load1: Vec<f64> = samples.iter().map(|s| s.load1).collect();
    println!(
        "\n## Requests after warm-up, by kind\n\n{}",
        by_kind(measured)
    );
    println!("## Verdict\n");
    println!("| figure | value | limit | verdict |\n|---|---|---|---|");
    let checks = verdict(settings, measured, &samples);
    for check in &checks {
        println!(
            "| {} | {} | {} | {} |",
            check.figure,
            check.value,
            check.limit,
            if check.passed { "ok" } else { "FAILED" }
        );
    }
    println!(
        "| achieved rate after warm-up | {:.1} requests/s (offered {:.0}) | | |",
        requests as f64 / seconds,
        settings.offered_rate()
    );
    println!("| peak resident memory (VmHWM) | {peak:.1} MiB | | |");
    println!(
        "| 1-minute load average (min - median - max) | {:.2} - {:.2} - {:.2} | | |",
        load1.iter().copied().fold(f64::INFINITY, f64::min),
        median(load1.clone()),
        load1.iter().copied().fold(0.0, f64::max),
    );
    println!("\nCSV: {}", csv_path.display());
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.figure)
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("the soak failed: {}", failed.join("; ")).into())
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let settings = Settings::from_env();
    println!("# The soak\n");
    println!(
        "Release build on PostgreSQL; {} min, a sample every {} s, the first {} s a warm-up; \
         {} journeys at {JOURNEY_RATE} requests/s, {} readers at {READER_RATE}/s, an admin at \
         {ADMIN_RATE}/s: {:.0} requests/s offered. Limits on, bcrypt cost 10, mail over SMTP \
         to the benchmark. Machine: {}; client and server on it.\n",
        settings.minutes,
        settings.sample.as_secs(),
        settings.warmup.as_secs(),
        settings.journeys,
        settings.readers,
        settings.offered_rate(),
        machine(),
    );
    // The soak is about PostgreSQL: without it, it fails rather than skip.
    let admin_url = postgres_admin_url();
    let mut options = ConnectOptions::new(admin_url.clone());
    options.max_connections(1).sqlx_logging(false);
    let db_admin = Database::connect(options)
        .await
        .map_err(|err| format!("the soak needs PostgreSQL at {admin_url}: {err}"))?;
    on_fresh_postgres(&admin_url, |url| soak(&settings, &db_admin, url)).await
}
