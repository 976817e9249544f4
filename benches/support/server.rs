//! What the benchmarks share: the release binary as a child process, and a PostgreSQL
//! database made for one run.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use sea_orm::{ConnectionTrait, Database};

/// The signing key every benchmark server runs with.
pub const SECRET: &str = "benchmark-secret-key-0123456789abcdef0123";

pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A `portcullis` executable and the folder it runs in, whose `config/` it reads.
pub struct Binary {
    pub path: PathBuf,
    pub dir: PathBuf,
}

impl Binary {
    /// The release binary of this checkout, the one the benchmark was built with.
    pub fn current() -> Self {
        Self {
            path: env!("CARGO_BIN_EXE_portcullis").into(),
            dir: env!("CARGO_MANIFEST_DIR").into(),
        }
    }

    /// The binary in the production profile on `database_url`, with the benchmarks' secret.
    fn command(&self, database_url: &str) -> Command {
        let mut command = Command::new(&self.path);
        command
            .current_dir(&self.dir)
            .env("PORTCULLIS_PROFILE", "production")
            .env("DATABASE_URL", database_url)
            .env("SECRET_KEY", SECRET);
        command
    }

    /// Runs an operator's command (`migrate`, `user promote ...`) on `database_url` and
    /// collects what it printed; the caller judges its exit status.
    #[allow(dead_code)] // not every benchmark runs commands
    pub fn run(&self, database_url: &str, args: &[&str]) -> Result<Output> {
        Ok(self.command(database_url).args(args).output()?)
    }
}

/// The server under test.
pub struct Server {
    child: Child,
    pub base: String,
}

impl Server {
    /// Logs `email` in and returns the access token.
    #[allow(dead_code)] // not every benchmark logs in
    pub async fn access_token(&self, email: &str, password: &str) -> Result<String> {
        log_in(&self.base, email, password).await
    }

    /// Starts the release binary in the production profile on `database_url`, with `env` on
    /// top, and waits until it answers.
    #[allow(dead_code)] // the start-up benchmark spawns and waits itself
    pub async fn start(database_url: &str, env: &[(&str, &str)]) -> Result<Self> {
        Self::start_binary(&Binary::current(), database_url, env).await
    }

    /// Starts `binary` as [`Server::start`] starts this checkout's; says so when it exits
    /// instead of answering.
    pub async fn start_binary(
        binary: &Binary,
        database_url: &str,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let mut server = Self::spawn_binary(binary, database_url, env, Stdio::inherit())?;
        if let Err(err) = server.wait_for("/health", Duration::from_millis(50)).await {
            return match server.child.try_wait()? {
                Some(status) => Err(format!("it exited ({status})").into()),
                None => Err(err),
            };
        }
        Ok(server)
    }

    /// Starts the release binary as [`Server::start`] does, without waiting. On a free port,
    /// or on the `PORT` that `env` names (a benchmark whose settings must name the port).
    #[allow(dead_code)] // only the start-up benchmark spawns without waiting
    pub fn spawn(database_url: &str, env: &[(&str, &str)]) -> Result<Self> {
        Self::spawn_logging_to(database_url, env, Stdio::inherit())
    }

    /// [`Server::spawn`], with the server's log going to `log`.
    #[allow(dead_code)] // only the drills that read the log
    pub fn spawn_logging_to(
        database_url: &str,
        env: &[(&str, &str)],
        log: impl Into<Stdio>,
    ) -> Result<Self> {
        Self::spawn_binary(&Binary::current(), database_url, env, log)
    }

    fn spawn_binary(
        binary: &Binary,
        database_url: &str,
        env: &[(&str, &str)],
        log: impl Into<Stdio>,
    ) -> Result<Self> {
        let port = match env.iter().find(|(name, _)| *name == "PORT") {
            Some((_, port)) => port.parse()?,
            None => std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port(),
        };
        let child = binary
            .command(database_url)
            .arg("serve")
            .env("PORT", port.to_string())
            .env("LOG_LEVEL", "warn")
            // Production requires a management listener; a fixed port would collide with any
            // other instance on the machine.
            .env("METRICS_LISTEN", "127.0.0.1:0")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        Ok(Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        })
    }

    /// Asks for `path` every `every` until it answers 2xx (for at most 10 s).
    pub async fn wait_for(&self, path: &str, every: Duration) -> Result<()> {
        let client = reqwest::Client::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(r) = client.get(format!("{}{path}", self.base)).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(every).await;
        }
        Err("the server did not start".into())
    }

    /// The server's exit status, if it has exited (without waiting).
    #[allow(dead_code)] // only the fault drill watches for an exit
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Stops the server as a platform does, with SIGTERM (it drains, then exits), and waits
    /// for its exit.
    #[allow(dead_code)] // most benchmarks just drop their servers
    pub async fn stop(&mut self) -> Result<ExitStatus> {
        let pid = libc::pid_t::try_from(self.child.id())?;
        // SAFETY: kill(2) with a valid signal on our own child's id has no memory effects.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resident memory now and at its peak, in MiB, from /proc.
    #[allow(dead_code)] // not every benchmark reads it
    pub fn memory(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
                .map_or(f64::NAN, |kb| kb / 1024.0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// How many files and sockets the server holds open now, from /proc.
    #[allow(dead_code)] // not every benchmark reads it
    pub fn descriptors(&self) -> std::io::Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))?.count())
    }
}

impl Server {
    /// Kills the process with SIGKILL (`kill -9`: no shutdown of any kind) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Makes `email` an admin with the operator's command, as an admin would be made.
#[allow(dead_code)] // not every benchmark needs an admin
pub fn promote(database_url: &str, email: &str) -> Result<()> {
    let output = Binary::current().run(database_url, &["user", "promote", email])?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned().into())
    }
}

/// A new database on the server of `admin_url`: its URL and name.
async fn fresh_postgres(admin_url: &str) -> Result<(String, String)> {
    let admin = Database::connect(admin_url).await?;
    // Several at once in one benchmark (the import's source and target) need distinct names.
    static MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("portcullis_bench_{}_{n}", std::process::id());
    admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\""))
        .await?;
    admin
        .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
        .await?;
    admin.close().await?;
    let (base, _) = admin_url
        .rsplit_once('/')
        .ok_or("the URL names no database")?;
    Ok((format!("{base}/{name}"), name))
}

async fn drop_postgres(admin_url: &str, name: &str) -> Result<()> {
    let admin = Database::connect(admin_url).await?;
    admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await?;
    admin.close().await?;
    Ok(())
}

/// Logs `email` in at the server at `base` and returns the access token.
#[allow(dead_code)] // not every benchmark logs in
pub async fn log_in(base: &str, email: &str, password: &str) -> Result<String> {
    let tokens: serde_json::Value = reqwest::Client::new()
        .post(format!("{base}/auth/login"))
        .json(&serde_json::json!({"email": email, "password": password}))
        .send()
        .await?
        .json()
        .await?;
    Ok(tokens["access_token"]
        .as_str()
        .ok_or("no token")?
        .to_owned())
}

/// The `p`th percentile of `sorted` samples (nearest rank).
#[allow(dead_code)] // not every benchmark reports percentiles
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank]
}

/// The number in the environment variable `name`, or `default`.
pub fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The PostgreSQL server a benchmark may create and drop databases on: `BENCH_POSTGRES_URL`,
/// else `TEST_DATABASE_URL`, else the local one.
pub fn postgres_admin_url() -> String {
    std::env::var("BENCH_POSTGRES_URL")
        .or_else(|_| std::env::var("TEST_DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Runs `bench` on each backend `BENCH_BACKENDS` names (default `sqlite,postgres`), with its
/// name and URL: a SQLite file in a temporary folder, or a fresh PostgreSQL database on
/// [`postgres_admin_url`]'s server.
#[allow(dead_code)] // not every benchmark runs on both
pub async fn on_each_backend<F, Fut>(mut bench: F) -> Result<()>
where
    F: FnMut(&'static str, String) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let backends = std::env::var("BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
    for backend in backends.split(',').map(str::trim) {
        match backend {
            "sqlite" => {
                let dir = tempfile::tempdir()?;
                let url = format!("sqlite://{}/bench.db?mode=rwc", dir.path().display());
                bench("SQLite", url).await?;
            }
            "postgres" => {
                on_fresh_postgres(&postgres_admin_url(), |url| bench("PostgreSQL", url)).await?;
            }
            other => return Err(format!("unknown backend {other:?}").into()),
        }
    }
    Ok(())
}

/// Runs `bench` on a database made for it on the server of `admin_url`, and drops it after;
/// says so and skips, when that server cannot be used.
pub async fn on_fresh_postgres<F, Fut>(admin_url: &str, bench: F) -> Result<()>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    match fresh_postgres(admin_url).await {
        Ok((url, name)) => {
            let result = bench(url).await;
            drop_postgres(admin_url, &name).await?;
            result
        }
        Err(err) => {
            println!("\n### PostgreSQL\n\nskipped: cannot use {admin_url}: {err}");
            Ok(())
        }
    }
}

/// The current code of an authenticator holding the base32 `secret` (SHA-1, 6 digits, 30 s:
/// totp-rs's defaults and the service's).
#[allow(dead_code)] // only the benchmarks that enrol TOTP
pub fn totp_code(secret: &str) -> Option<String> {
    let secret: String = secret.split_whitespace().collect();
    let totp = totp_rs::Builder::new()
        .with_secret(totp_rs::Secret::try_from_base32(&secret).ok()?)
        .build()
        .ok()?;
    Some(totp.generate_current().to_string())
}
