//! Database faults (issue 25): the release binary under a steady mixed load while its database
//! fails, and what it answers meanwhile and after. Four drills:
//!
//! - `pg-restart`: a PostgreSQL cluster of the drill's own (`initdb`, `pg_ctl`; never the
//!   machine's server) stopped under load, once with `-m fast` and once with `-m immediate` (a
//!   crash), then started again. Answers meanwhile are 503 within `database_timeout_seconds`;
//!   the service recovers without a restart; the session cache is distrusted while its
//!   listening connection is down and trusted again after; a logout written by someone else right
//!   after recovery is honoured; no connection is left over (`pg_stat_activity` against the
//!   pool's own count); the error rate is back to 0.
//! - `pg-slow`: the same cluster behind a [`cable::Cable`] that adds latency to every round trip:
//!   50 ms (throughput and p99), then twice `database_timeout_seconds` (every answer within the
//!   timeout, in-flight requests and connections bounded), then none (recovery).
//! - `sqlite-full`: the SQLite file on an 8 MiB tmpfs that a filler file fills during a
//!   registration flood: 503s (no 500, no panic), reads still served, the file intact
//!   (`PRAGMA integrity_check`), every registration answered 201 present; recovery once space
//!   returns, without a restart.
//! - `sqlite-readonly`: the file on an ext4 loop file system made immutable under the running
//!   service (`chattr +i`; as root neither `chmod` stops a write nor can a file system with
//!   files open for writing be remounted read-only): writes 503 with one clear log line each,
//!   reads served, recovery once writable; then a start on a read-only mount, which must fail
//!   with a clear message, and a start once it is writable again.
//!
//! Run it as root (mounts, `runuser` for PostgreSQL) with `cargo bench --bench faults`. Each
//! drill prints its figures and the expectations it checked; any unmet expectation makes the
//! command fail. Settings, all optional:
//! - `FAULTS` (default `pg-restart,pg-slow,sqlite-full,sqlite-readonly`): the drills to run;
//! - `FAULTS_WORKERS` (default 6): concurrent clients of the closed-loop load;
//! - `FAULTS_OUTAGE_SECONDS` (default 4): how long PostgreSQL stays down, the disk full, the
//!   file read-only, or the latency beyond the timeout.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

#[path = "support/cable.rs"]
mod cable;
#[path = "faults/postgres.rs"]
mod postgres;
#[path = "support/server.rs"]
mod server;
#[path = "faults/sqlite.rs"]
mod sqlite;

use server::{Result, Server, percentile};

const PASSWORD: &str = "benchmark password 1";

/// `database_timeout_seconds` as the drills run it: the default.
const DATABASE_TIMEOUT: Duration = Duration::from_secs(5);

/// What an answer may take beyond the database timeout (the request's own work, a busy
/// machine) before it counts as hanging.
const MARGIN: Duration = Duration::from_secs(1);

/// The expectations a drill checked, and which failed.
#[derive(Default)]
pub struct Verdict {
    failed: Vec<String>,
}

impl Verdict {
    /// Prints `what` with its outcome and remembers a failure.
    pub fn expect(&mut self, ok: bool, what: impl Into<String>) {
        let what = what.into();
        println!("- [{}] {what}", if ok { "x" } else { " " });
        if !ok {
            self.failed.push(what);
        }
    }
}

/// The server settings every drill shares: the cheapest bcrypt cost production allows, no
/// abuse limits (the load logs in from one address), and the management listener on a free
/// port. `metrics` is that port.
pub fn server_env(metrics: u16) -> Vec<(&'static str, String)> {
    vec![
        ("RATE_LIMITS_ENABLED", "false".into()),
        ("MAX_SESSIONS_PER_USER", "1000000".into()),
        ("BCRYPT_COST", "10".into()),
        (
            "DATABASE_TIMEOUT_SECONDS",
            DATABASE_TIMEOUT.as_secs().to_string(),
        ),
        ("METRICS_LISTEN", format!("127.0.0.1:{metrics}")),
    ]
}

/// The environment of [`server_env`] as [`Server::start`] takes it.
pub fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Runs `command` to its end; its error output when it fails.
pub fn run(command: &mut std::process::Command) -> Result<()> {
    let output = command.output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )
        .into())
    }
}

/// A port nothing listens on now.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Every series of a `/metrics` page, by its name and labels.
pub async fn scrape(client: &reqwest::Client, metrics: u16) -> Result<HashMap<String, f64>> {
    let page = client
        .get(format!("http://127.0.0.1:{metrics}/metrics"))
        .timeout(Duration::from_secs(5))
        .send()
        .await?
        .text()
        .await?;
    Ok(page
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect())
}

/// The pooled connections `/metrics` reports, idle and in use together.
pub fn pooled(series: &HashMap<String, f64>) -> f64 {
    ["idle", "in_use"]
        .iter()
        .map(|state| {
            series
                .get(&format!(
                    "portcullis_db_pool_connections{{state=\"{state}\"}}"
                ))
                .copied()
                .unwrap_or(0.0)
        })
        .sum()
}

/// What a request of the load did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// `GET /protected/user` with an access token (the session cache may answer it).
    Check,
    /// `POST /auth/refresh` (a rotation: a read and a write).
    Refresh,
    /// `POST /auth/login` (a read, a bcrypt check, a session written).
    Login,
    /// `POST /auth/register` (a bcrypt hash, a user written).
    Register,
    /// `GET /ready` (a database ping).
    Ready,
}

/// One answered (or failed) request.
#[derive(Debug, Clone)]
pub struct Sample {
    pub op: Op,
    pub started: Instant,
    pub took: Duration,
    /// The HTTP status; 0 when no answer came (a transport error or the client's timeout).
    pub status: u16,
}

impl Sample {
    pub fn ended(&self) -> Instant {
        self.started + self.took
    }
}

/// A load on one server: closed-loop workers, or requests arriving at a fixed rate.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    samples: Arc<Mutex<Vec<Sample>>>,
    /// Registrations answered 201, by address.
    registered: Arc<Mutex<Vec<String>>>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
}

/// What a worker holds: its account's tokens.
struct Account {
    email: String,
    access: String,
    refresh: String,
}

/// The shared parts of the load's requests.
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    base: String,
    samples: Arc<Mutex<Vec<Sample>>>,
    registered: Arc<Mutex<Vec<String>>>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
}

impl Client {
    /// Sends one request of `op` and records it; the JSON body of a 2xx.
    async fn send(
        &self,
        op: Op,
        request: reqwest::RequestBuilder,
    ) -> (u16, Option<serde_json::Value>) {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let started = Instant::now();
        let (status, body) = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = if response.status().is_success() {
                    response.json().await.ok()
                } else {
                    None
                };
                (status, body)
            }
            Err(_) => (0, None),
        };
        let took = started.elapsed();
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        lock(&self.samples).push(Sample {
            op,
            started,
            took,
            status,
        });
        (status, body)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn check(&self, token: &str) -> u16 {
        let request = self
            .http
            .get(self.url("/protected/user"))
            .bearer_auth(token);
        self.send(Op::Check, request).await.0
    }

    async fn ready(&self) -> u16 {
        self.send(Op::Ready, self.http.get(self.url("/ready")))
            .await
            .0
    }

    async fn login(&self, email: &str) -> Option<(String, String)> {
        let request = self
            .http
            .post(self.url("/auth/login"))
            .json(&json!({"email": email, "password": PASSWORD}));
        tokens(self.send(Op::Login, request).await.1)
    }

    async fn refresh(&self, refresh: &str) -> Option<(String, String)> {
        let request = self
            .http
            .post(self.url("/auth/refresh"))
            .json(&json!({"refresh_token": refresh}));
        tokens(self.send(Op::Refresh, request).await.1)
    }

    async fn register(&self, email: String) {
        let request = self
            .http
            .post(self.url("/auth/register"))
            .json(&json!({"email": email, "password": PASSWORD}));
        if self.send(Op::Register, request).await.0 == 201 {
            lock(&self.registered).push(email);
        }
    }
}

fn tokens(body: Option<serde_json::Value>) -> Option<(String, String)> {
    let body = body?;
    Some((
        body["access_token"].as_str()?.to_owned(),
        body["refresh_token"].as_str()?.to_owned(),
    ))
}

/// The steps of a closed-loop worker, in turn: mostly token checks, as in production.
const MIX: [Op; 8] = [
    Op::Check,
    Op::Check,
    Op::Check,
    Op::Refresh,
    Op::Check,
    Op::Login,
    Op::Register,
    Op::Ready,
];

/// The requests of an open-loop load, in turn: none rotates a token, so any number may run at
/// once.
const ARRIVALS: [Op; 4] = [Op::Check, Op::Ready, Op::Login, Op::Check];

impl Load {
    fn new(server: &Server) -> (Self, Client) {
        let load = Self {
            stop: Arc::default(),
            tasks: Vec::new(),
            samples: Arc::default(),
            registered: Arc::default(),
            in_flight: Arc::default(),
            max_in_flight: Arc::default(),
        };
        let client = Client {
            // Well past every bound the server promises, so that a hang shows as a hang.
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap_or_default(),
            base: server.base.clone(),
            samples: Arc::clone(&load.samples),
            registered: Arc::clone(&load.registered),
            in_flight: Arc::clone(&load.in_flight),
            max_in_flight: Arc::clone(&load.max_in_flight),
        };
        (load, client)
    }

    /// `workers` clients, each with an account of its own (registered here), each sending its
    /// next request when the last is answered. `registering` of them only register.
    pub async fn closed(
        server: &Server,
        name: &str,
        workers: usize,
        registering: usize,
    ) -> Result<Self> {
        let (mut load, client) = Self::new(server);
        for worker in 0..workers {
            let email = format!("{name}-worker-{worker}@example.com");
            client.register(email.clone()).await;
            let (access, refresh) = client
                .login(&email)
                .await
                .ok_or("a worker could not log in before the drill")?;
            let client = client.clone();
            let stop = Arc::clone(&load.stop);
            let mut account = Account {
                email,
                access,
                refresh,
            };
            let only_register = worker < registering;
            load.tasks.push(tokio::spawn(async move {
                let mut step = 0;
                while !stop.load(Ordering::SeqCst) {
                    let op = if only_register {
                        Op::Register
                    } else {
                        MIX[step % MIX.len()]
                    };
                    step += 1;
                    run_step(&client, &mut account, op, step).await;
                }
            }));
        }
        lock(&load.samples).clear();
        Ok(load)
    }

    /// `per_second` requests a second from [`ARRIVALS`], each sent when due whether the ones
    /// before were answered or not, as independent clients do.
    pub async fn open(server: &Server, name: &str, per_second: u32) -> Result<Self> {
        let (mut load, client) = Self::new(server);
        let email = format!("{name}-arrivals@example.com");
        client.register(email.clone()).await;
        let (access, _) = client
            .login(&email)
            .await
            .ok_or("could not log in before the drill")?;
        let stop = Arc::clone(&load.stop);
        let account = Arc::new(Account {
            email,
            access,
            refresh: String::new(),
        });
        load.tasks.push(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs(1) / per_second);
            let mut step = 0;
            while !stop.load(Ordering::SeqCst) {
                ticks.tick().await;
                let op = ARRIVALS[step % ARRIVALS.len()];
                step += 1;
                let client = client.clone();
                let account = Arc::clone(&account);
                tokio::spawn(async move {
                    match op {
                        Op::Check => drop(client.check(&account.access).await),
                        Op::Login => drop(client.login(&account.email).await),
                        _ => drop(client.ready().await),
                    }
                });
            }
        }));
        lock(&load.samples).clear();
        Ok(load)
    }

    /// The samples so far.
    pub fn samples(&self) -> Vec<Sample> {
        lock(&self.samples).clone()
    }

    /// The addresses registered with a 201 so far.
    pub fn registered(&self) -> Vec<String> {
        lock(&self.registered).clone()
    }

    /// The most requests in flight at once, since the last call.
    pub fn take_max_in_flight(&self) -> usize {
        self.max_in_flight
            .swap(self.in_flight.load(Ordering::SeqCst), Ordering::SeqCst)
    }

    /// Stops sending and waits for the answers in flight.
    pub async fn stop(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.samples()
    }
}

/// One step of a worker: a refresh or login that fails leaves the tokens it had.
async fn run_step(client: &Client, account: &mut Account, op: Op, step: usize) {
    match op {
        Op::Check => drop(client.check(&account.access).await),
        Op::Ready => drop(client.ready().await),
        Op::Register => {
            let email = format!("{}-{step}", account.email);
            client.register(email).await;
        }
        Op::Refresh => {
            if let Some((access, refresh)) = client.refresh(&account.refresh).await {
                account.access = access;
                account.refresh = refresh;
            }
        }
        Op::Login => {
            // A login opens a session; its tokens replace the worker's, so that the session
            // count stays small and refreshes rotate the newest.
            if let Some((access, refresh)) = client.login(&account.email).await {
                account.access = access;
                account.refresh = refresh;
            }
        }
    }
}

pub fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Milliseconds, one decimal.
pub fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// A line of figures for `samples`: how many, the statuses, throughput of 2xx over `span`,
/// p50, p99 and max.
pub fn summary(samples: &[Sample], span: Duration) -> String {
    if samples.is_empty() {
        return "no requests".into();
    }
    let mut statuses: std::collections::BTreeMap<u16, usize> = std::collections::BTreeMap::new();
    for sample in samples {
        *statuses.entry(sample.status).or_default() += 1;
    }
    let ok = samples.iter().filter(|s| is_success(s.status)).count();
    let mut took: Vec<Duration> = samples.iter().map(|s| s.took).collect();
    took.sort();
    format!(
        "{} requests ({}), {:.0} 2xx/s, p50 {} ms, p99 {} ms, max {} ms",
        samples.len(),
        statuses
            .iter()
            .map(|(status, n)| format!(
                "{}: {n}",
                if *status == 0 {
                    "no answer".to_owned()
                } else {
                    status.to_string()
                }
            ))
            .collect::<Vec<_>>()
            .join(", "),
        ok as f64 / span.as_secs_f64().max(0.001),
        ms(percentile(&took, 50.0)),
        ms(percentile(&took, 99.0)),
        ms(*took.last().unwrap_or(&Duration::ZERO)),
    )
}

pub fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

/// The samples that started in `[from, to)`.
pub fn started_within(samples: &[Sample], from: Instant, to: Instant) -> Vec<Sample> {
    samples
        .iter()
        .filter(|s| s.started >= from && s.started < to)
        .cloned()
        .collect()
}

/// The samples of `op`.
pub fn of(samples: &[Sample], op: Op) -> Vec<Sample> {
    samples.iter().filter(|s| s.op == op).cloned().collect()
}

/// From `since` to the end of the first 2xx that ended after it (of any op but token checks
/// and readiness, which say nothing of writes when `writes_only`).
pub fn first_success_after(
    samples: &[Sample],
    since: Instant,
    writes_only: bool,
) -> Option<Duration> {
    samples
        .iter()
        .filter(|s| is_success(s.status) && s.ended() > since)
        .filter(|s| !writes_only || matches!(s.op, Op::Login | Op::Register | Op::Refresh))
        .map(|s| s.ended() - since)
        .min()
}

/// Checks what every fault window must show: no 500 (a storage fault is not a bug), no
/// request without an answer, every 503 within the timeout and its margin, and no answer
/// later than twice that (a request that waited out one call's timeout and then went on).
pub fn expect_bounded_answers(verdict: &mut Verdict, what: &str, samples: &[Sample]) {
    let errors = samples
        .iter()
        .filter(|s| s.status >= 500 && s.status != 503)
        .count();
    let unanswered = samples.iter().filter(|s| s.status == 0).count();
    let slowest = |unavailable: bool| {
        samples
            .iter()
            .filter(|s| !unavailable || s.status == 503)
            .map(|s| s.took)
            .max()
            .unwrap_or_default()
    };
    verdict.expect(
        errors == 0 && unanswered == 0,
        format!("{what}: no 5xx but 503 ({errors}) and every request answered ({unanswered} not)"),
    );
    verdict.expect(
        slowest(true) <= DATABASE_TIMEOUT + MARGIN,
        format!(
            "{what}: every 503 within database_timeout_seconds + {} s (slowest {} ms)",
            MARGIN.as_secs(),
            ms(slowest(true))
        ),
    );
    verdict.expect(
        slowest(false) <= (DATABASE_TIMEOUT + MARGIN) * 2,
        format!(
            "{what}: no answer later than twice that (slowest {} ms)",
            ms(slowest(false))
        ),
    );
}

/// The latencies of the 503s in `samples`: "n 503s, p99 X ms, max Y ms".
pub fn unavailable_figures(samples: &[Sample]) -> String {
    let mut took: Vec<Duration> = samples
        .iter()
        .filter(|s| s.status == 503)
        .map(|s| s.took)
        .collect();
    if took.is_empty() {
        return "no 503".into();
    }
    took.sort();
    format!(
        "{} answers 503: p50 {} ms, p99 {} ms, max {} ms",
        took.len(),
        ms(percentile(&took, 50.0)),
        ms(percentile(&took, 99.0)),
        ms(*took.last().unwrap_or(&Duration::ZERO))
    )
}

#[tokio::main]
async fn main() {
    let drills = std::env::var("FAULTS")
        .unwrap_or_else(|_| "pg-restart,pg-slow,sqlite-full,sqlite-readonly".into());
    println!("# Database faults\n");
    println!(
        "Release build, production profile, database_timeout_seconds = {}, bcrypt cost 10; \
         client, server and database on one machine.",
        DATABASE_TIMEOUT.as_secs()
    );
    let mut verdict = Verdict::default();
    for drill in drills.split(',').map(str::trim) {
        let result = match drill {
            "pg-restart" => postgres::restart(&mut verdict).await,
            "pg-slow" => postgres::slow(&mut verdict).await,
            "sqlite-full" => sqlite::full(&mut verdict).await,
            "sqlite-readonly" => sqlite::read_only(&mut verdict).await,
            other => Err(format!("unknown drill {other:?}").into()),
        };
        if let Err(err) = result {
            verdict.expect(false, format!("{drill} ran to its end (it failed: {err})"));
        }
    }
    if verdict.failed.is_empty() {
        println!("\nEvery expectation was met.");
    } else {
        eprintln!("\n{} expectation(s) not met:", verdict.failed.len());
        for failure in &verdict.failed {
            eprintln!("- {failure}");
        }
        std::process::exit(1);
    }
}
