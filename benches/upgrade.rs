//! A rolling upgrade from the previous release to this checkout, on one database (issue 25).
//!
//! Builds the previous tagged release, then on each backend: starts it on a fresh database and
//! puts a steady mixed load on it (register, login, refresh, `GET /protected/user`) from a few
//! tasks, sent to whichever instances are in the rotation, as a load balancer would; runs this
//! checkout's `portcullis migrate` (timed); checks that the old instance still serves; starts
//! the new one beside it; checks each against the other (tokens, refresh rotation, a logout
//! honoured by the other's cache, users registered on either); replaces the old instance (out of
//! the rotation, SIGTERM) and starts an old one again, as a restart in the middle of a rollout
//! would. Every load answer but the expected 2xx, and every transport error, is counted with
//! its time. The migration policy this exercises: docs/decisions/25-rolling-upgrades.md.
//!
//! Run it with `cargo bench --bench upgrade`. Settings, all optional:
//! - `UPGRADE_FROM` (default: the latest tag reachable, `git describe --tags --abbrev=0`);
//! - `BENCH_LOAD_TASKS` (default 3): tasks sending the load;
//! - `BENCH_BACKENDS` (default `sqlite,postgres`) and `BENCH_POSTGRES_URL`, as for the others.
//!
//! The old release is extracted with `git archive` into `target/upgrade/<tag>/src` and built in
//! release mode with `CARGO_TARGET_DIR=target/upgrade/target`, once: its binary is kept as
//! `target/upgrade/<tag>/portcullis` and reused by later runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[path = "support/server.rs"]
mod server;

use server::{Binary, Result, Server, on_each_backend, setting};

const PASSWORD: &str = "benchmark password 1";

/// Both releases run without abuse limits (the load registers and logs in from one address),
/// with the cheapest cost production allows, and a short drain (the drill takes the old
/// instance out of the rotation before it stops it).
const ENV: [(&str, &str); 4] = [
    ("RATE_LIMITS_ENABLED", "false"),
    ("BCRYPT_COST", "10"),
    ("MAX_SESSIONS_PER_USER", "1000000"),
    ("SHUTDOWN_DRAIN_SECONDS", "1"),
];

/// A revocation not honoured after this long is reported as a failure.
const GIVE_UP: Duration = Duration::from_secs(5);

/// Runs `program` with `args` in `dir`: its standard output, or what it said on failure.
fn output(program: &str, args: &[&str], dir: &Path) -> Result<String> {
    let out = Command::new(program).args(args).current_dir(dir).output()?;
    if !out.status.success() {
        return Err(format!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// The previous release, built once in release mode: its tag and binary.
fn previous_release() -> Result<(String, Binary)> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tag = match std::env::var("UPGRADE_FROM") {
        Ok(tag) => tag,
        Err(_) => output("git", &["describe", "--tags", "--abbrev=0"], repo)?,
    };
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo.join("target"), PathBuf::from);
    let root = target.join("upgrade");
    let here = root.join(&tag);
    let binary = Binary {
        path: here.join("portcullis"),
        dir: here.join("src"),
    };
    if binary.path.exists() {
        println!("Reusing {tag}'s build: {}\n", binary.path.display());
        return Ok((tag, binary));
    }
    if !binary.dir.exists() {
        std::fs::create_dir_all(&binary.dir)?;
        let mut archive = Command::new("git")
            .args(["archive", "--format=tar", &tag])
            .current_dir(repo)
            .stdout(Stdio::piped())
            .spawn()?;
        let tar = Command::new("tar")
            .arg("-x")
            .current_dir(&binary.dir)
            .stdin(archive.stdout.take().ok_or("no archive")?)
            .status()?;
        if !archive.wait()?.success() || !tar.success() {
            std::fs::remove_dir_all(&binary.dir)?;
            return Err(format!("cannot extract {tag}").into());
        }
    }
    // The extracted tree has no .git: its build script would stamp this checkout's commit.
    let commit = output(
        "git",
        &["rev-parse", "--short=12", &format!("{tag}^{{commit}}")],
        repo,
    )?;
    println!(
        "Building {tag} in release mode under {} (first run only: it takes a while, ~15 min on \
         2 cores)...\n",
        root.display()
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(cargo)
        .args(["build", "--release", "--locked", "--bin", "portcullis"])
        .current_dir(&binary.dir)
        .env("CARGO_TARGET_DIR", root.join("target"))
        .env("PORTCULLIS_COMMIT", commit)
        .status()?;
    if !built.success() {
        return Err(format!("building {tag} failed").into());
    }
    std::fs::copy(root.join("target/release/portcullis"), &binary.path)?;
    Ok((tag, binary))
}

/// The instances in the rotation, each with a label for the report.
#[derive(Clone, Default)]
struct Rotation(Arc<RwLock<Vec<(Client, &'static str)>>>);

impl Rotation {
    fn add(&self, server: &Server, label: &'static str) {
        self.0
            .write()
            .unwrap()
            .push((Client::new(&server.base), label));
    }

    fn remove(&self, server: &Server) {
        self.0
            .write()
            .unwrap()
            .retain(|(client, _)| client.base != server.base);
    }

    /// The `n`th instance, round robin.
    fn pick(&self, n: u64) -> (Client, &'static str) {
        let instances = self.0.read().unwrap();
        instances[(n % instances.len() as u64) as usize].clone()
    }
}

/// The load's record: requests sent, and every failure with its time and the drill's step.
#[derive(Default)]
struct Ledger {
    sent: AtomicU64,
    step: Mutex<&'static str>,
    failures: Mutex<Vec<String>>,
    stopping: AtomicBool,
}

/// One instance as a client sees it.
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    fn new(base: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("an HTTP client"),
            base: base.to_owned(),
        }
    }

    /// Sends `body` (JSON) or a GET with `bearer`, and expects `expected`: the JSON answer, if any.
    async fn call(
        &self,
        path: &str,
        body: Option<Value>,
        bearer: Option<&str>,
        expected: u16,
    ) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut request = match body {
            Some(body) => self.http.post(url).json(&body),
            None if path == "/auth/logout" => self.http.post(url),
            None => self.http.get(url),
        };
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        if status != expected {
            let text = response.text().await.unwrap_or_default();
            return Err(format!(
                "{path}: {status} {}",
                text.chars().take(160).collect::<String>()
            )
            .into());
        }
        Ok(response.json().await.unwrap_or(Value::Null))
    }

    async fn register(&self, email: &str) -> Result<()> {
        let body = json!({"email": email, "password": PASSWORD});
        self.call("/auth/register", Some(body), None, 201)
            .await
            .map(drop)
    }

    /// Logs in: the token answer.
    async fn login(&self, email: &str) -> Result<Value> {
        let body = json!({"email": email, "password": PASSWORD});
        self.call("/auth/login", Some(body), None, 200).await
    }

    async fn refresh(&self, tokens: &Value) -> Result<Value> {
        let body = json!({"refresh_token": tokens["refresh_token"]});
        self.call("/auth/refresh", Some(body), None, 200).await
    }

    async fn user(&self, tokens: &Value, expected: u16) -> Result<()> {
        let token = tokens["access_token"].as_str().ok_or("no access token")?;
        self.call("/protected/user", None, Some(token), expected)
            .await
            .map(drop)
    }

    async fn logout(&self, tokens: &Value) -> Result<()> {
        let token = tokens["access_token"].as_str().ok_or("no access token")?;
        self.call("/auth/logout", None, Some(token), 204)
            .await
            .map(drop)
    }
}

/// One task of the load: each step of a user's round goes to the next instance in the rotation.
async fn load(task: u64, rotation: Rotation, ledger: Arc<Ledger>, started: Instant) {
    let mut n = task;
    for round in 0.. {
        let email = format!("load-{task}-{round}@example.com");
        let mut tokens = Value::Null;
        for op in ["register", "login", "refresh", "user"] {
            if ledger.stopping.load(Ordering::Relaxed) {
                return;
            }
            n += 1;
            let (client, label) = rotation.pick(n);
            let outcome = match op {
                "register" => client.register(&email).await,
                "login" => client.login(&email).await.map(|t| tokens = t),
                "refresh" => client.refresh(&tokens).await.map(|t| tokens = t),
                _ => client.user(&tokens, 200).await,
            };
            ledger.sent.fetch_add(1, Ordering::Relaxed);
            if let Err(err) = outcome {
                let step = *ledger.step.lock().unwrap();
                ledger.failures.lock().unwrap().push(format!(
                    "{:.2} s, {step}, {op} on {label}: {err}",
                    started.elapsed().as_secs_f64()
                ));
                break;
            }
        }
    }
}

/// A user's round trip on one instance: register, log in, refresh, log out, and the logged-out
/// token refused.
async fn round_trip(client: &Client, email: &str) -> Result<()> {
    client.register(email).await?;
    let tokens = client.refresh(&client.login(email).await?).await?;
    client.user(&tokens, 200).await?;
    client.logout(&tokens).await?;
    client.user(&tokens, 401).await
}

/// A user registered on `from` logs in on `to`.
async fn registered_logs_in(from: &Client, to: &Client, email: &str) -> Result<String> {
    from.register(email).await?;
    to.login(email).await?;
    Ok("yes".into())
}

/// An access token of `from` is accepted by `to`.
async fn token_accepted(from: &Client, to: &Client, email: &str) -> Result<String> {
    to.user(&from.login(email).await?, 200).await?;
    Ok("200".into())
}

/// A refresh token of `from` rotates on `to`: the new pair works on `from`, the spent token is
/// refused.
async fn refresh_rotates(from: &Client, to: &Client, email: &str) -> Result<String> {
    let tokens = from.login(email).await?;
    from.user(&to.refresh(&tokens).await?, 200).await?;
    let spent = json!({"refresh_token": tokens["refresh_token"]});
    to.call("/auth/refresh", Some(spent), None, 401).await?;
    Ok("rotated; the spent token refused".into())
}

/// A logout on `new` ends the session on `old`, whose cache held it: after how long.
async fn logout_honoured(old: &Client, new: &Client, email: &str) -> Result<String> {
    let tokens = old.login(email).await?;
    for _ in 0..3 {
        old.user(&tokens, 200).await?;
    }
    new.logout(&tokens).await?;
    let since = Instant::now();
    while old.user(&tokens, 401).await.is_err() {
        if since.elapsed() > GIVE_UP {
            return Err("still accepted after 5 s".into());
        }
    }
    Ok(format!(
        "refused after {:.1} ms",
        since.elapsed().as_secs_f64() * 1000.0
    ))
}

/// The cross checks between an old and a new instance: a line each.
async fn cross_checks(old: &Client, new: &Client) {
    for (from, to, a, b) in [(old, new, "old", "new"), (new, old, "new", "old")] {
        let email = format!("cross-{a}@example.com");
        row(
            &format!("a user registered on {a} logs in on {b}"),
            &registered_logs_in(from, to, &email).await,
        );
        row(
            &format!("an access token of {a} is accepted by {b}"),
            &token_accepted(from, to, &email).await,
        );
        row(
            &format!("a refresh token of {a} rotates on {b}"),
            &refresh_rotates(from, to, &email).await,
        );
    }
    row(
        "a logout on new is honoured by old's session cache",
        &logout_honoured(old, new, "cross-old@example.com").await,
    );
}

fn row(check: &str, outcome: &Result<String>) {
    match outcome {
        Ok(what) => println!("| {check} | ok: {what} |"),
        Err(err) => println!("| {check} | **FAILED**: {err} |"),
    }
}

async fn drill(backend: &'static str, url: String, old_release: &Binary, tasks: u64) -> Result<()> {
    println!("\n### {backend}\n");
    let started = Instant::now();
    let mut old = Server::start_binary(old_release, &url, &ENV).await?;
    let rotation = Rotation::default();
    rotation.add(&old, "old");
    let ledger = Arc::new(Ledger::default());
    let step = |name: &'static str| *ledger.step.lock().unwrap() = name;
    step("old alone");
    let load_tasks: Vec<_> = (0..tasks)
        .map(|task| tokio::spawn(load(task, rotation.clone(), ledger.clone(), started)))
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;

    step("migrate");
    let migrating = Instant::now();
    let migrated = Binary::current().run(&url, &["migrate"])?;
    let migration_time = migrating.elapsed();
    if !migrated.status.success() {
        return Err(format!("migrate: {}", String::from_utf8_lossy(&migrated.stderr)).into());
    }
    println!("| step | result |\n|---|---|");
    println!(
        "| new `portcullis migrate` under load (process start to exit) | {:.0} ms: {} |",
        migration_time.as_secs_f64() * 1000.0,
        String::from_utf8_lossy(&migrated.stdout).trim()
    );
    step("old on the migrated schema");
    tokio::time::sleep(Duration::from_secs(2)).await;
    row(
        "old serves on the migrated schema (register, login, refresh, logout)",
        &round_trip(&Client::new(&old.base), "after-migrate@example.com")
            .await
            .map(|()| "yes".into()),
    );

    step("old and new");
    let new = Server::start(&url, &ENV).await?;
    rotation.add(&new, "new");
    tokio::time::sleep(Duration::from_secs(2)).await;
    cross_checks(&Client::new(&old.base), &Client::new(&new.base)).await;

    step("old replaced");
    rotation.remove(&old);
    // Requests already sent to it finish within its drain.
    let status = old.stop().await?;
    row(
        "the old instance stops on SIGTERM",
        &Ok(format!("{status}")),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    step("old restarted");
    let restarted = Server::start_binary(old_release, &url, &ENV).await;
    row(
        "an old instance started again after the migration",
        &restarted
            .as_ref()
            .map(|_| "serves".into())
            .map_err(|e| e.to_string().into()),
    );
    if let Ok(again) = &restarted {
        row(
            "... and it serves (register, login, refresh, logout)",
            &round_trip(&Client::new(&again.base), "restarted@example.com")
                .await
                .map(|()| "yes".into()),
        );
    }
    let old_migrate = old_release.run(&url, &["migrate"])?;
    let said = String::from_utf8_lossy(if old_migrate.status.success() {
        &old_migrate.stdout
    } else {
        &old_migrate.stderr
    })
    .trim()
    .replace('\n', " ");
    row(
        "the old release's `portcullis migrate` on the migrated database",
        &Ok(format!("{}: {said}", old_migrate.status)),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    ledger.stopping.store(true, Ordering::Relaxed);
    for task in load_tasks {
        task.await?;
    }
    let failures = ledger.failures.lock().unwrap();
    println!(
        "| load: requests / failed during the whole rollout ({:.0} s) | {} / {} |",
        started.elapsed().as_secs_f64(),
        ledger.sent.load(Ordering::Relaxed),
        failures.len()
    );
    for failure in failures.iter() {
        println!("| failure | {failure} |");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let tasks = setting("BENCH_LOAD_TASKS", 3);
    let (tag, old) = previous_release()?;
    println!("# Rolling upgrade from {tag} to this checkout\n");
    println!(
        "Release builds of both, on one database; {tasks} tasks send the load round robin to \
         the instances in the rotation. \"old\" is {tag}, \"new\" this checkout."
    );
    on_each_backend(|backend, url| drill(backend, url, &old, tasks)).await
}
