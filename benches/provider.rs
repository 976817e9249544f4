//! The OpenID provider's token endpoint (issue 24): authorization codes exchanged and refresh
//! tokens rotated per second, beside password logins at the production bcrypt cost, against the
//! release binary on SQLite and on PostgreSQL.
//!
//! A first-party client (no consent page) and one signed-in console session make the codes:
//! each `GET /oauth/authorize` answers a code at once. Then:
//! 1. authorize: `BENCH_CODES` codes, `BENCH_CONCURRENCY` at a time;
//! 2. exchange: all of them at `POST /oauth/token` (Basic client authentication, PKCE), at the
//!    same concurrency, within the codes' 60 seconds;
//! 3. refresh: each of `BENCH_CONCURRENCY` grants refreshes its chain for `BENCH_SECONDS`;
//! 4. login: `POST /auth/login` at bcrypt cost 12 for `BENCH_SECONDS`, at the same concurrency.
//!
//! Run it with `cargo bench --bench provider`. Settings, all optional: `BENCH_CODES` (2000),
//! `BENCH_CONCURRENCY` (16), `BENCH_SECONDS` (10), `BENCH_BACKENDS` and `BENCH_POSTGRES_URL`
//! as for the others.

use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::future::join_all;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

#[path = "support/server.rs"]
mod server;

use server::{Result, SECRET, Server, on_each_backend, percentile, setting};

const PASSWORD: &str = "benchmark password 1";
const REDIRECT: &str = "https://app.example/callback";
const VERIFIER: &str = "benchmark-verifier-0123456789-0123456789-abcdefghij";

/// Requests per second and latency percentiles of one phase.
struct Figures {
    done: usize,
    failed: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Figures {
    fn row(&self, what: &str) -> String {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        format!(
            "| {what} | {:.0}/s | {:.1} ms | {:.1} ms | {} |",
            self.done as f64 / self.elapsed.as_secs_f64(),
            percentile(&sorted, 50.0).as_secs_f64() * 1000.0,
            percentile(&sorted, 99.0).as_secs_f64() * 1000.0,
            self.failed,
        )
    }
}

/// The console session's cookies, signed in as `email`.
async fn console_cookies(http: &reqwest::Client, base: &str, email: &str) -> Result<String> {
    let page = http.get(format!("{base}/console/sign-in")).send().await?;
    let visitor = cookies(&page);
    let html = page.text().await?;
    let marker = "name=\"csrf\" value=\"";
    let start = html.find(marker).ok_or("no csrf field")? + marker.len();
    let csrf = &html[start..start + html[start..].find('"').ok_or("no csrf end")?];
    let origin = base.replace("127.0.0.1", "localhost");
    let signed_in = http
        .post(format!("{base}/console/sign-in"))
        .header("cookie", &visitor)
        .header("origin", origin)
        .form(&[
            ("csrf", csrf),
            ("email", email),
            ("password", PASSWORD),
            ("next", ""),
        ])
        .send()
        .await?;
    Ok(format!("{visitor}; {}", cookies(&signed_in)))
}

fn cookies(response: &reqwest::Response) -> String {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|value| value.to_str().ok()?.split(';').next().map(str::to_owned))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Runs `work(i)` for `i` in `0..total`, `concurrency` at a time, timing each.
async fn phase<F, Fut, T>(total: usize, concurrency: usize, work: F) -> (Figures, Vec<T>)
where
    F: Fn(usize) -> Fut + Clone,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    let lanes = (0..concurrency).map(|lane| {
        let work = work.clone();
        async move {
            let mut out = Vec::new();
            let mut latencies = Vec::new();
            let mut failed = 0;
            for i in (lane..total).step_by(concurrency) {
                let at = Instant::now();
                match work(i).await {
                    Some(value) => out.push(value),
                    None => failed += 1,
                }
                latencies.push(at.elapsed());
            }
            (out, latencies, failed)
        }
    });
    let results = join_all(lanes).await;
    let elapsed = started.elapsed();
    let mut values = Vec::new();
    let mut latencies = Vec::new();
    let mut failed = 0;
    for (out, lane_latencies, lane_failed) in results {
        values.extend(out);
        latencies.extend(lane_latencies);
        failed += lane_failed;
    }
    (
        Figures {
            done: values.len(),
            failed,
            elapsed,
            latencies,
        },
        values,
    )
}

/// Runs `step(lane, state)` in `concurrency` lanes for `seconds`, each lane threading its state.
async fn timed<F, Fut, S>(seconds: u64, states: Vec<S>, step: F) -> Figures
where
    F: Fn(S) -> Fut + Clone,
    Fut: std::future::Future<Output = Option<S>>,
    S: Clone,
{
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let lanes = states.into_iter().map(|mut state| {
        let step = step.clone();
        async move {
            let (mut done, mut failed, mut latencies) = (0, 0, Vec::new());
            while Instant::now() < deadline {
                let at = Instant::now();
                match step(state.clone()).await {
                    Some(next) => {
                        state = next;
                        done += 1;
                    }
                    None => failed += 1,
                }
                latencies.push(at.elapsed());
            }
            (done, failed, latencies)
        }
    });
    let results = join_all(lanes).await;
    let mut figures = Figures {
        done: 0,
        failed: 0,
        elapsed: started.elapsed(),
        latencies: Vec::new(),
    };
    for (done, failed, latencies) in results {
        figures.done += done;
        figures.failed += failed;
        figures.latencies.extend(latencies);
    }
    figures
}

async fn bench(name: &'static str, url: String) -> Result<()> {
    let codes: usize = setting("BENCH_CODES", 2000);
    let concurrency: usize = setting("BENCH_CONCURRENCY", 16);
    let seconds: u64 = setting("BENCH_SECONDS", 10);
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port()
        .to_string();
    let issuer = format!("http://localhost:{port}");
    let env = [
        ("PORT", port.as_str()),
        ("PUBLIC_URL", issuer.as_str()),
        ("JWT_ISSUER", issuer.as_str()),
        ("JWT_ALGORITHM", "EdDSA"),
        ("RATE_LIMITS_ENABLED", "false"),
        ("MAX_SESSIONS_PER_USER", "1000000"),
        ("METRICS_LISTEN", "127.0.0.1:0"),
    ];
    let server = Server::start(&url, &env).await?;
    let base = server.base.clone();
    let made = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args([
            "clients",
            "create",
            "--name",
            "Bench",
            "--redirect-uri",
            REDIRECT,
        ])
        .args(["--first-party", "--json"])
        .env("PORTCULLIS_PROFILE", "production")
        .env("DATABASE_URL", &url)
        .env("SECRET_KEY", SECRET)
        .envs(env)
        .output()?;
    if !made.status.success() {
        return Err(String::from_utf8_lossy(&made.stderr).into_owned().into());
    }
    let client: Value = serde_json::from_slice(&made.stdout)?;
    let client_id = client["client_id"]
        .as_str()
        .ok_or("no client_id")?
        .to_owned();
    let secret = client["client_secret"]
        .as_str()
        .ok_or("no secret")?
        .to_owned();

    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let email = "bench@example.com";
    http.post(format!("{base}/auth/register"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await?;
    let cookie = console_cookies(&http, &base, email).await?;
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(VERIFIER.as_bytes()));
    let query = serde_urlencoded::to_string([
        ("response_type", "code"),
        ("client_id", client_id.as_str()),
        ("redirect_uri", REDIRECT),
        ("scope", "openid email offline_access"),
        ("state", "s"),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ])?;
    let authorize = format!("{base}/oauth/authorize?{query}");

    let (authorized, codes) = phase(codes, concurrency, |_| {
        let (http, authorize, cookie) = (http.clone(), authorize.clone(), cookie.clone());
        async move {
            let answer = http
                .get(&authorize)
                .header("cookie", cookie)
                .send()
                .await
                .ok()?;
            let location = answer.headers().get("location")?.to_str().ok()?;
            let (_, query) = location.split_once('?')?;
            let params: Vec<(String, String)> = serde_urlencoded::from_str(query).ok()?;
            params
                .into_iter()
                .find(|(k, _)| k == "code")
                .map(|(_, v)| v)
        }
    })
    .await;

    let token = format!("{base}/oauth/token");
    let (exchanged, refresh_tokens) = phase(codes.len(), concurrency, |i| {
        let (http, token, code) = (http.clone(), token.clone(), codes[i].clone());
        let (client_id, secret) = (client_id.clone(), secret.clone());
        async move {
            let answer = http
                .post(&token)
                .basic_auth(client_id, Some(secret))
                .form(&[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", REDIRECT),
                    ("code_verifier", VERIFIER),
                ])
                .send()
                .await
                .ok()?;
            let tokens: Value = answer.json().await.ok()?;
            tokens["refresh_token"].as_str().map(str::to_owned)
        }
    })
    .await;

    let lanes: Vec<String> = refresh_tokens.into_iter().take(concurrency).collect();
    let refreshed = timed(seconds, lanes, |refresh: String| {
        let (http, token) = (http.clone(), token.clone());
        let (client_id, secret) = (client_id.clone(), secret.clone());
        async move {
            let answer = http
                .post(&token)
                .basic_auth(client_id, Some(secret))
                .form(&[("grant_type", "refresh_token"), ("refresh_token", &refresh)])
                .send()
                .await
                .ok()?;
            let tokens: Value = answer.json().await.ok()?;
            tokens["refresh_token"].as_str().map(str::to_owned)
        }
    })
    .await;

    let logins = timed(seconds, vec![(); concurrency], |()| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let answer = http
                .post(format!("{base}/auth/login"))
                .json(&json!({"email": email, "password": PASSWORD}))
                .send()
                .await
                .ok()?;
            answer.status().is_success().then_some(())
        }
    })
    .await;

    let (rss, peak) = server.memory();
    println!("\n### {name}\n");
    println!("| at concurrency {concurrency} | rate | p50 | p99 | failed |");
    println!("|---|---|---|---|---|");
    println!(
        "{}",
        authorized.row("GET /oauth/authorize (a code, consent remembered)")
    );
    println!("{}", exchanged.row("POST /oauth/token, authorization_code"));
    println!("{}", refreshed.row("POST /oauth/token, refresh_token"));
    println!("{}", logins.row("POST /auth/login (bcrypt cost 12)"));
    println!("\nserver memory: {rss:.0} MiB resident, {peak:.0} MiB at peak");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    on_each_backend(bench).await
}
