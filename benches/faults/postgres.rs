//! The PostgreSQL drills: a cluster of the drill's own, restarted and slowed under load.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};

use super::cable::Cable;
use super::server::{Result, Server, setting};
use super::{
    DATABASE_TIMEOUT, Load, MARGIN, Op, Verdict, env_refs, expect_bounded_answers,
    first_success_after, free_port, is_success, ms, of, pooled, run, scrape, server_env,
    started_within, summary, unavailable_figures,
};

/// `database_max_connections`, the default.
const POOL_SIZE: f64 = 10.0;

/// How long after its end a session ended elsewhere may still pass here: the feed counts as
/// lost 3 s after the newest ping that came back was sent, checked every second.
const STALE_BOUND: Duration = Duration::from_secs(5);

/// A PostgreSQL cluster in a temporary folder, on a free port of 127.0.0.1, stopped and
/// removed when dropped. Never the machine's own server: the drill stops and crashes it.
pub struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
    /// PostgreSQL refuses to run as root: then every command runs as the `postgres` user.
    as_postgres: bool,
}

impl Cluster {
    pub fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let as_postgres = unsafe { libc::geteuid() } == 0;
        if as_postgres {
            run(Command::new("chown").arg("postgres:").arg(dir.path()))?;
        }
        let cluster = Self {
            dir,
            port: free_port()?,
            as_postgres,
        };
        run(cluster
            .command("initdb")
            .arg("-D")
            .arg(cluster.data())
            .args(["-U", "postgres", "--auth=trust"]))?;
        cluster.start_server()?;
        Ok(cluster)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, program: &str) -> Command {
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--", program]);
            command
        } else {
            Command::new(program)
        }
    }

    fn pg_ctl(&self, args: &[&str]) -> Command {
        let mut command = self.command("pg_ctl");
        command.arg("-D").arg(self.data()).args(args);
        command
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start_server(&self) -> Result<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log");
        run(self
            .pg_ctl(&["-w", "-o", &options, "-l"])
            .arg(log)
            .arg("start"))
    }

    /// Stops the server with `mode` (`fast`: sessions ended cleanly; `immediate`: a crash,
    /// recovered at the next start) and waits until it is down.
    pub fn stop_server(&self, mode: &str) -> Result<()> {
        run(&mut self.pg_ctl(&["-w", "-m", mode, "stop"]))
    }

    /// Starts Portcullis on `url` with `env`, its log in this cluster's folder as `log`.
    pub async fn serve(
        &self,
        url: &str,
        env: &[(&'static str, String)],
        log: &str,
    ) -> Result<Server> {
        let log = std::fs::File::create(self.dir.path().join(log))?;
        let server = Server::spawn_logging_to(url, &env_refs(env), log)?;
        server
            .wait_for("/health", Duration::from_millis(50))
            .await?;
        Ok(server)
    }

    /// A URL on database `name` of this cluster.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates database `name`; its URL.
    pub async fn database(&self, name: &str) -> Result<String> {
        let admin = Database::connect(self.url("postgres")).await?;
        admin
            .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
            .await?;
        admin.close().await?;
        Ok(self.url(name))
    }

    /// Connections to database `name`, from `pg_stat_activity`; `admin` is on another database.
    pub async fn connections(admin: &DatabaseConnection, name: &str) -> Result<i64> {
        let row = admin
            .query_one_raw(sea_orm::Statement::from_sql_and_values(
                sea_orm::DbBackend::Postgres,
                "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = $1",
                [name.into()],
            ))
            .await?
            .ok_or("pg_stat_activity answered nothing")?;
        Ok(row.try_get("", "n")?)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-w", "-m", "immediate", "stop"]).output();
    }
}

/// Runs a blocking command off the runtime's workers, which serve the load meanwhile.
async fn blocking(task: impl FnOnce() -> Result<()> + Send + 'static) -> Result<()> {
    tokio::task::spawn_blocking(task).await?
}

/// The value of one series, if `/metrics` shows it.
async fn metric(http: &reqwest::Client, metrics: u16, series: &str) -> Option<f64> {
    scrape(http, metrics).await.ok()?.get(series).copied()
}

const TRUSTED: &str = "portcullis_session_cache_trusted";
const FEED_CONNECTS: &str = "portcullis_session_cache_feed_connects_total";

/// Waits until the session cache is trusted (`trusted`) or not; how long that took.
async fn cache_trusted(
    http: &reqwest::Client,
    metrics: u16,
    trusted: bool,
    limit: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if metric(http, metrics, TRUSTED).await == Some(f64::from(u8::from(trusted))) {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// A user of the drill's own with a session the server has cached: its access token.
async fn cached_session(server: &Server, email: &str) -> Result<String> {
    let http = reqwest::Client::new();
    http.post(format!("{}/auth/register", server.base))
        .json(&serde_json::json!({"email": email, "password": super::PASSWORD}))
        .send()
        .await?;
    let token = server.access_token(email, super::PASSWORD).await?;
    for _ in 0..3 {
        check(server, &token).await?;
    }
    Ok(token)
}

async fn check(server: &Server, token: &str) -> Result<u16> {
    Ok(reqwest::Client::new()
        .get(format!("{}/protected/user", server.base))
        .bearer_auth(token)
        .send()
        .await?
        .status()
        .as_u16())
}

/// Ends the session of `token` with SQL on `url`, as another instance or an operator would:
/// this server hears of it only through its feed, or reads it when its cache is distrusted.
async fn end_elsewhere(url: &str, token: &str) -> Result<()> {
    let payload = token.split('.').nth(1).ok_or("not a JWT")?;
    let claims: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?)?;
    let sid = claims["sid"].as_str().ok_or("no sid")?;
    let db = Database::connect(url).await?;
    db.execute_raw(sea_orm::Statement::from_sql_and_values(
        sea_orm::DbBackend::Postgres,
        "UPDATE sessions SET ended_at = now() WHERE id = $1::uuid",
        [sid.into()],
    ))
    .await?;
    db.close().await?;
    Ok(())
}

/// Asks with `token` until it is refused: how long that took.
async fn refused_within(server: &Server, token: &str, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if check(server, token).await.ok() == Some(401) {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

pub async fn restart(verdict: &mut Verdict) -> Result<()> {
    println!("\n## pg-restart\n");
    let cluster = std::sync::Arc::new(Cluster::start()?);
    let name = "restart";
    let url = cluster.database(name).await?;
    let metrics = free_port()?;
    let env = server_env(metrics);
    let mut server = cluster.serve(&url, &env, "restart.log").await?;
    let http = reqwest::Client::new();
    cache_trusted(&http, metrics, true, Duration::from_secs(10))
        .await
        .ok_or("the session cache was never trusted")?;
    let outage = Duration::from_secs(setting("FAULTS_OUTAGE_SECONDS", 4));
    let load = Load::closed(&server, name, setting("FAULTS_WORKERS", 6), 0).await?;
    let steady = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!(
        "Steady load before: {}\n",
        summary(
            &started_within(&load.samples(), steady, Instant::now()),
            steady.elapsed()
        )
    );

    for mode in ["fast", "immediate"] {
        println!(
            "### pg_ctl stop -m {mode}, {} s down, start\n",
            outage.as_secs()
        );
        let connects = metric(&http, metrics, FEED_CONNECTS).await.unwrap_or(0.0);
        let probe = cached_session(&server, &format!("probe-{mode}@example.com")).await?;

        let down = Instant::now();
        let stopping = std::sync::Arc::clone(&cluster);
        blocking(move || stopping.stop_server(mode)).await?;
        let mut distrusted = None;
        while down.elapsed() < outage {
            if distrusted.is_none() && metric(&http, metrics, TRUSTED).await == Some(0.0) {
                distrusted = Some(down.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let starting = std::sync::Arc::clone(&cluster);
        blocking(move || starting.start_server()).await?;
        let up = Instant::now();

        // The first write answered 2xx after PostgreSQL accepts connections again.
        let mut first_write = None;
        while first_write.is_none() && up.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            first_write = first_success_after(&load.samples(), up, true);
        }
        let ended = Instant::now();
        end_elsewhere(&url, &probe).await?;
        let honoured = refused_within(&server, &probe, Duration::from_secs(10)).await;
        let trusted_again = cache_trusted(&http, metrics, true, Duration::from_secs(15))
            .await
            .map(|_| up.elapsed());
        let connects_after = metric(&http, metrics, FEED_CONNECTS).await.unwrap_or(0.0);

        tokio::time::sleep(Duration::from_secs(5)).await;
        let samples = load.samples();
        let during = started_within(&samples, down, up);
        let recovering = started_within(&samples, up, up + first_write.unwrap_or_default());
        let after = started_within(
            &samples,
            Instant::now() - Duration::from_secs(5),
            Instant::now(),
        );
        println!("- while down: {}", summary(&during, up - down));
        println!("  - {}", unavailable_figures(&during));
        println!(
            "- PostgreSQL back -> first write answered 2xx: {}",
            first_write.map_or("never".into(), |d| format!("{} ms", ms(d)))
        );
        println!(
            "- cache distrusted {} after the stop began, trusted again {} after PostgreSQL was \
             back; feed connects {connects} -> {connects_after}",
            distrusted.map_or("never".into(), |d| format!("{} ms", ms(d))),
            trusted_again.map_or("never".into(), |d| format!("{} ms", ms(d))),
        );
        println!(
            "- a session ended elsewhere {} ms after PostgreSQL was back: refused by this \
             server {} later",
            ms(ended - up),
            honoured.map_or("never".into(), |d| format!("{} ms", ms(d)))
        );
        println!(
            "- the 5 s after: {}\n",
            summary(&after, Duration::from_secs(5))
        );
        expect_bounded_answers(verdict, &format!("{mode}: while down"), &during);
        expect_bounded_answers(
            verdict,
            &format!("{mode}: until the first write"),
            &recovering,
        );
        verdict.expect(
            during.iter().any(|s| s.status == 503),
            format!("{mode}: the outage was seen (503s while down)"),
        );
        verdict.expect(
            first_write.is_some_and(|d| d < Duration::from_secs(10)),
            format!("{mode}: writes answered again within 10 s of PostgreSQL's return"),
        );
        verdict.expect(
            distrusted.is_some() && trusted_again.is_some() && connects_after > connects,
            format!("{mode}: the session cache distrusted while down, trusted again after, its feed reconnected"),
        );
        verdict.expect(
            honoured.is_some_and(|d| d < Duration::from_secs(2)),
            format!("{mode}: a session ended elsewhere right after recovery is refused within 2 s"),
        );
        verdict.expect(
            !after.is_empty() && after.iter().all(|s| is_success(s.status)),
            format!("{mode}: no error in the 5 s after recovery"),
        );
    }
    load.stop().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let admin = Database::connect(cluster.url("postgres")).await?;
    let opened = Cluster::connections(&admin, name).await?;
    let pool = pooled(&scrape(&http, metrics).await?);
    admin.close().await?;
    println!(
        "After both rounds, load stopped: {opened} connections to the database in \
         pg_stat_activity; the pool reports {pool} (+ 1 listening connection)"
    );
    verdict.expect(
        opened as f64 <= POOL_SIZE + 1.0 && opened as f64 == pool + 1.0,
        "no connection left over: pg_stat_activity = the pool's connections + the listener, at most the pool size + 1",
    );
    verdict.expect(
        server.exited().is_none(),
        "Portcullis ran throughout, never restarted",
    );
    Ok(())
}

pub async fn slow(verdict: &mut Verdict) -> Result<()> {
    println!("\n## pg-slow\n");
    let cluster = Cluster::start()?;
    let name = "slow";
    let url = cluster.database(name).await?;
    let (cable, via_cable) = Cable::in_front_of(&url).await;
    let metrics = free_port()?;
    let env = server_env(metrics);
    let mut server = cluster.serve(&via_cable, &env, "slow.log").await?;
    let http = reqwest::Client::new();
    cache_trusted(&http, metrics, true, Duration::from_secs(10))
        .await
        .ok_or("the session cache was never trusted")?;
    let admin = Database::connect(cluster.url("postgres")).await?;
    let rate: u32 = setting("FAULTS_RATE", 20);
    let probe = cached_session(&server, "probe-slow@example.com").await?;
    let load = Load::open(&server, name, rate).await?;
    let beyond = DATABASE_TIMEOUT * 2;
    let long = Duration::from_secs(setting("FAULTS_OUTAGE_SECONDS", 4)).max(beyond + MARGIN * 2);
    println!(
        "Open-loop load: {rate} requests a second (token checks, readiness, logins), sent when \
         due whatever is in flight.\n"
    );
    println!(
        "| latency added | for | answers | max in flight | max client connections | max pooled | max in pg_stat_activity |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|");
    let phases = [
        ("none", Duration::ZERO, Duration::from_secs(6)),
        ("50 ms", Duration::from_millis(50), Duration::from_secs(8)),
        ("2 x timeout", beyond, long),
        ("removed", Duration::ZERO, Duration::from_secs(8)),
    ];
    let mut removed_at = Instant::now();
    let mut ended_during_latency = None;
    // Checks of a session ended elsewhere that this server still accepted, and the last one.
    let mut accepted_after_end = 0;
    let mut last_accepted = Duration::ZERO;
    for (label, latency, span) in phases {
        cable.set_latency(latency);
        let from = Instant::now();
        if label == "removed" {
            removed_at = from;
        }
        load.take_max_in_flight();
        let (mut in_flight, mut open, mut pool, mut in_pg) = (0, 0.0_f64, 0.0_f64, 0_i64);
        while from.elapsed() < span {
            if label == "2 x timeout" && ended_during_latency.is_none() && from.elapsed() > MARGIN {
                end_elsewhere(&url, &probe).await?;
                ended_during_latency = Some((Instant::now(), None));
            }
            if let Some((ended, None)) = ended_during_latency {
                match check(&server, &probe).await? {
                    401 => ended_during_latency = Some((ended, Some(ended.elapsed()))),
                    200 => {
                        accepted_after_end += 1;
                        last_accepted = ended.elapsed();
                    }
                    _ => {}
                }
            }
            in_flight = in_flight.max(load.take_max_in_flight());
            if let Ok(series) = scrape(&http, metrics).await {
                open = open.max(
                    series
                        .get("portcullis_connections_open")
                        .copied()
                        .unwrap_or(0.0),
                );
                pool = pool.max(pooled(&series));
            }
            in_pg = in_pg.max(Cluster::connections(&admin, name).await?);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let phase = started_within(&load.samples(), from, Instant::now());
        println!(
            "| {label} | {} s | {} | {in_flight} | {open} | {pool} | {in_pg} |",
            span.as_secs(),
            summary(&phase, span)
        );
        if label == "2 x timeout" {
            // Requests still in flight when the phase ends are answered in the next one.
            tokio::time::sleep(DATABASE_TIMEOUT + MARGIN).await;
            let phase = started_within(&load.samples(), from, from + span);
            expect_bounded_answers(verdict, "latency 2 x timeout", &phase);
            let database = phase.iter().filter(|s| s.op != Op::Check);
            verdict.expect(
                database.clone().all(|s| s.status == 503),
                "latency 2 x timeout: every request that needs the database answers 503",
            );
            let bound = (f64::from(rate) * (DATABASE_TIMEOUT + MARGIN * 2).as_secs_f64()) as usize;
            verdict.expect(
                in_flight <= bound,
                format!("latency 2 x timeout: in flight at most rate x (timeout + 2 s) = {bound} (saw {in_flight})"),
            );
            // The pool, the listener, and a listener replacing one it gave up on.
            verdict.expect(
                pool <= POOL_SIZE && in_pg as f64 <= POOL_SIZE + 2.0,
                format!("latency 2 x timeout: pooled connections at most {POOL_SIZE} (saw {pool}), in pg_stat_activity at most {} (saw {in_pg})", POOL_SIZE + 2.0),
            );
            println!("  - {}", unavailable_figures(&phase));
            for op in [Op::Check, Op::Ready, Op::Login] {
                println!("  - {op:?}: {}", summary(&of(&phase, op), span));
            }
        }
    }
    let samples = load.stop().await;
    let recovered = first_success_after(&of(&samples, Op::Login), removed_at, true);
    let late = started_within(&samples, removed_at + DATABASE_TIMEOUT, Instant::now());
    println!(
        "\n- latency removed -> first login answered 2xx: {}",
        recovered.map_or("never".into(), |d| format!("{} ms", ms(d)))
    );
    if let Some((_, honoured)) = ended_during_latency {
        println!(
            "- a session ended elsewhere while the latency was 2 x timeout: accepted {accepted_after_end} \
             times after, the last {} ms after its end; refused by this server {} later (until \
             then each check took the timeout)",
            ms(last_accepted),
            honoured.map_or("not within the phases".into(), |d| format!("{} ms", ms(d)))
        );
        // The session cache's promise: a feed that cannot show it is current within 3 s (a ping
        // a second) is no longer trusted.
        verdict.expect(
            last_accepted <= STALE_BOUND,
            format!(
                "latency 2 x timeout: a session ended elsewhere is not accepted more than {} s after (the cache distrusts a lagging feed)",
                STALE_BOUND.as_secs()
            ),
        );
    }
    verdict.expect(
        recovered.is_some() && late.iter().all(|s| is_success(s.status)),
        "latency removed: the service recovers, no error from the timeout after the removal",
    );
    verdict.expect(
        server.exited().is_none(),
        "Portcullis ran throughout, never restarted",
    );
    admin.close().await?;
    drop(cable);
    Ok(())
}
