//! How long a revocation answered by one instance takes to be honoured by another (issue 14):
//! two release binaries on one database, each with its session cache. A trial logs a user in on
//! A, has B check the token until B answers it from its cache, then revokes the session on A
//! (a logout, or an admin's deactivation) and asks B again and again: the delay is from A's
//! answer to B's first refusal.
//!
//! Run it with `cargo bench --bench revocation`. Settings, all optional:
//! - `BENCH_TRIALS` (default 300): logouts per backend; a third as many deactivations follow;
//! - `BENCH_BACKENDS` (default `sqlite,postgres`) and `BENCH_POSTGRES_URL`, as for the others.

use std::time::{Duration, Instant};

use serde_json::json;

#[path = "support/server.rs"]
mod server;

use server::{Result, Server, on_each_backend, percentile, promote};

const PASSWORD: &str = "benchmark password 1";

/// The servers run without abuse limits (the trials log in hundreds of times from one address)
/// and with the cheapest cost production allows (the logins are not what is measured).
const ENV: [(&str, &str); 3] = [
    ("RATE_LIMITS_ENABLED", "false"),
    ("MAX_SESSIONS_PER_USER", "1000000"),
    ("BCRYPT_COST", "10"),
];

/// A refusal that has not come after this long is reported as a failure.
const GIVE_UP: Duration = Duration::from_secs(5);

struct Instance {
    server: Server,
    client: reqwest::Client,
}

impl Instance {
    async fn start(database_url: &str) -> Result<Self> {
        Ok(Self {
            server: Server::start(database_url, &ENV).await?,
            client: reqwest::Client::new(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.base)
    }

    async fn status(&self, path: &str, token: &str) -> Result<u16> {
        let response = self
            .client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await?;
        Ok(response.status().as_u16())
    }

    /// Checks `token` a few times, so that B holds it in its cache (the login's own
    /// announcement may void what the first check stored).
    async fn warm(&self, token: &str) -> Result<()> {
        for _ in 0..3 {
            if self.status("/protected/user", token).await? != 200 {
                return Err("a fresh token was refused".into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// Asks until `token` is refused: the time from `since` to that refusal.
    async fn refused(&self, token: &str, since: Instant) -> Result<Duration> {
        loop {
            if self.status("/protected/user", token).await? == 401 {
                return Ok(since.elapsed());
            }
            if since.elapsed() > GIVE_UP {
                return Err("the revocation was not honoured within 5 s".into());
            }
        }
    }
}

async fn register(a: &Instance, email: &str) -> Result<()> {
    let status = a
        .client
        .post(a.url("/auth/register"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await?
        .status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("registering {email}: {status}").into())
    }
}

fn report(backend: &str, kind: &str, mut delays: Vec<Duration>) {
    delays.sort();
    let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
    println!(
        "| {backend} | {kind} | {} | {} | {} | {} | {} |",
        delays.len(),
        ms(percentile(&delays, 50.0)),
        ms(percentile(&delays, 90.0)),
        ms(percentile(&delays, 99.0)),
        ms(*delays.last().expect("some trials")),
    );
}

async fn bench(backend: &'static str, database_url: String, trials: usize) -> Result<()> {
    let a = Instance::start(&database_url).await?;
    let b = Instance::start(&database_url).await?;
    register(&a, "admin@example.com").await?;
    promote(&database_url, "admin@example.com")?;
    let admin = a.server.access_token("admin@example.com", PASSWORD).await?;
    register(&a, "user@example.com").await?;
    let me: serde_json::Value = a
        .client
        .get(a.url("/auth/me"))
        .bearer_auth(a.server.access_token("user@example.com", PASSWORD).await?)
        .send()
        .await?
        .json()
        .await?;
    let user = format!("/admin/users/{}", me["id"]);

    let mut logouts = Vec::with_capacity(trials);
    for _ in 0..trials {
        let token = a.server.access_token("user@example.com", PASSWORD).await?;
        b.warm(&token).await?;
        let logout = a
            .client
            .post(a.url("/auth/logout"))
            .bearer_auth(&token)
            .send()
            .await?;
        let answered = Instant::now();
        if logout.status() != 204 {
            return Err(format!("logout: {}", logout.status()).into());
        }
        logouts.push(b.refused(&token, answered).await?);
    }
    report(backend, "logout", logouts);

    let mut deactivations = Vec::with_capacity(trials / 3);
    let patch = |active: bool| {
        a.client
            .patch(a.url(&user))
            .bearer_auth(&admin)
            .json(&json!({"is_active": active}))
            .send()
    };
    for _ in 0..trials / 3 {
        let token = a.server.access_token("user@example.com", PASSWORD).await?;
        b.warm(&token).await?;
        let deactivated = patch(false).await?;
        let answered = Instant::now();
        if deactivated.status() != 200 {
            return Err(format!("deactivation: {}", deactivated.status()).into());
        }
        deactivations.push(b.refused(&token, answered).await?);
        patch(true).await?;
    }
    report(backend, "deactivation", deactivations);
    // B is a process of its own, so its /metrics are its own: proof that the trials measured
    // a cache, not a database read.
    let metrics = b.client.get(b.url("/metrics")).send().await?.text().await?;
    let lookups: Vec<&str> = metrics
        .lines()
        .filter(|line| line.starts_with("portcullis_session_cache_lookups_total"))
        .collect();
    println!(
        "| {backend} | B's session cache | {} | | | | |",
        lookups.join("; ")
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let trials: usize = server::setting("BENCH_TRIALS", 300);
    println!("# Revocation delay between two instances\n");
    println!(
        "Release build; two instances on one database, each with its session cache; client and \
         servers on one machine. Delay: from A's answer to the first refusal by B (B is asked \
         again and again, one request at a time).\n"
    );
    println!("| backend | revocation | trials | p50 ms | p90 ms | p99 ms | max ms |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    on_each_backend(|backend, url| bench(backend, url, trials)).await
}
