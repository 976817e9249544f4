//! The crash drill (issue 25): a mixed write flood against the release binary, ended by
//! `kill -9` at a random moment, many times over. After each restart, everything the clients
//! were told is checked against what the service now says; at the end, against the database.
//!
//! What it holds the service to:
//! - it starts cleanly after every kill: it answers `/ready`, and its log has no panic;
//! - an answer given before the kill is durable: a registration answered 201 logs in, a refresh
//!   token handed out works, a session logged out (204) stays ended, and a new password,
//!   address, role, deactivation or TOTP factor answered 2xx is in force, with the sessions it
//!   had to end ended;
//! - a change cut off by the kill is all there or not at all. The request whose answer never
//!   came is resolved by what the service says afterwards: the old or the new password logs in,
//!   never neither, and when the new one does, the sessions the change ends are ended. The
//!   database agrees: each account's credential version, its audit events of each kind and its
//!   queued mail match the changes that took effect;
//! - no mail is lost: every queued message is sent in the end (one that a killed process had
//!   claimed waits for its five-minute lease), and the duplicates that the outbox's
//!   at-least-once promise allows are counted.
//!
//! Run it with `cargo bench --bench crash`. Settings, all optional:
//! - `CRASH_ROUNDS` (default 25): kills per backend;
//! - `CRASH_WORKERS` (default 12): concurrent clients, each with accounts of its own;
//! - `CRASH_MAX_FLOOD_MS` (default 3000): each flood lasts a random 50 ms to this long;
//! - `CRASH_SEED`: the seed of every random choice (printed; rerun with it to replay them);
//! - `BENCH_BACKENDS` (default `sqlite,postgres`) and `BENCH_POSTGRES_URL`, as for the others.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};
use serde_json::{Value, json};

#[path = "support/server.rs"]
mod server;
// The SMTP server of the mail tests; the drill needs only part of it.
#[allow(dead_code)]
#[path = "../tests/api/smtp.rs"]
mod smtp;

use server::{Result, Server, on_each_backend, promote, setting, totp_code};
use smtp::SmtpServer;

/// Abuse limits off (the drill logs in from one address hundreds of times) and the cheapest
/// bcrypt cost production allows; mail goes to the drill's own SMTP server.
const ENV: [(&str, &str); 8] = [
    ("RATE_LIMITS_ENABLED", "false"),
    ("MAIL_LIMIT_PER_RECIPIENT", "1000000"),
    ("MAIL_LIMIT_PER_ACCOUNT", "1000000"),
    ("MAIL_LIMIT_PER_IP", "1000000"),
    ("MAX_SESSIONS_PER_USER", "1000000"),
    ("BCRYPT_COST", "10"),
    ("MAIL_TRANSPORT", "smtp"),
    ("MAIL_RETRY_BASE_SECONDS", "1"),
];

/// Accounts a worker floods at once; older ones are kept for the final check only.
const ACCOUNTS_PER_WORKER: usize = 4;
/// Sessions of an account the ledger follows; older ones are forgotten (not ended).
const SESSIONS_FOLLOWED: usize = 3;
/// How long a flow waits for its link to arrive by mail.
const MAIL_WAIT: Duration = Duration::from_secs(3);
/// Mail claimed by a killed process is due again after the outbox's lease.
const MAIL_DEADLINE: Duration = Duration::from_secs(6 * 60);
const ADMIN_EMAIL: &str = "crash-admin@example.com";
const ADMIN_PASSWORD: &str = "crash drill admin password";

#[tokio::main]
async fn main() -> Result<()> {
    let seed = setting("CRASH_SEED", rand::random::<u64>());
    let drill = Drill {
        rounds: setting("CRASH_ROUNDS", 25),
        workers: setting("CRASH_WORKERS", 12),
        max_flood: Duration::from_millis(setting("CRASH_MAX_FLOOD_MS", 3000)),
        seed,
    };
    println!(
        "# Crash drill: {} kills per backend, {} workers, seed {seed}",
        drill.rounds, drill.workers
    );
    let failed = std::cell::Cell::new(false);
    on_each_backend(|name, url| {
        let (drill, failed) = (&drill, &failed);
        async move {
            let report = drill.run(name, &url).await?;
            report.print(name);
            failed.set(failed.get() || !report.violations.is_empty());
            Ok(())
        }
    })
    .await?;
    if failed.get() {
        return Err("the crash drill found violations (above)".into());
    }
    Ok(())
}

struct Drill {
    rounds: usize,
    workers: usize,
    max_flood: Duration,
    seed: u64,
}

/// What a backend's run found.
#[derive(Default)]
struct Report {
    violations: Vec<String>,
    /// Per operation: answered 2xx, and cut off by a kill.
    acked: HashMap<&'static str, u64>,
    in_doubt: HashMap<&'static str, u64>,
    /// Cut-off changes found applied, and not applied, after the restart.
    doubts_applied: u64,
    doubts_not_applied: u64,
    restarts: Vec<Duration>,
    checks: u64,
    accounts: usize,
    mail_queued: i64,
    mail_received: i64,
    mail_wait: Duration,
    log_errors: usize,
}

impl Report {
    fn violation(&mut self, text: String) {
        if self.violations.len() < 50 {
            eprintln!("VIOLATION: {text}");
        }
        self.violations.push(text);
    }

    fn print(&self, backend: &str) {
        let mut restarts = self.restarts.clone();
        restarts.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!("\n### {backend}\n");
        println!("| | |\n|---|---|");
        println!("| kills and restarts | {} |", self.restarts.len());
        if let (Some(first), Some(last)) = (restarts.first(), restarts.last()) {
            println!(
                "| restart to ready | median {:.0} ms, max {:.0} ms (min {:.0} ms) |",
                ms(restarts[restarts.len() / 2]),
                ms(*last),
                ms(*first)
            );
        }
        let total = |m: &HashMap<&str, u64>| m.values().sum::<u64>();
        println!("| requests answered 2xx | {} |", total(&self.acked));
        println!(
            "| requests cut off by a kill | {} ({} found applied, {} not) |",
            total(&self.in_doubt),
            self.doubts_applied,
            self.doubts_not_applied
        );
        println!("| accounts | {} |", self.accounts);
        println!("| checks after restarts | {} |", self.checks);
        println!(
            "| outbox | every job settled {:.0} s after the last restart |",
            self.mail_wait.as_secs_f64()
        );
        println!(
            "| reset mail (accounts never deactivated) | {} queued, {} received ({} duplicates) |",
            self.mail_queued,
            self.mail_received,
            self.mail_received - self.mail_queued,
        );
        println!("| error lines in the service's log | {} |", self.log_errors);
        println!("| violations | {} |", self.violations.len());
        let mut ops: Vec<_> = self.acked.keys().chain(self.in_doubt.keys()).collect();
        ops.sort();
        ops.dedup();
        let line = ops.iter().fold(String::new(), |mut line, op| {
            let _ = write!(
                line,
                "{op} {}/{}, ",
                self.acked.get(*op).unwrap_or(&0),
                self.in_doubt.get(*op).unwrap_or(&0)
            );
            line
        });
        println!(
            "\nanswered/cut off, by operation: {}",
            line.trim_end_matches(", ")
        );
        for violation in self.violations.iter().take(20) {
            println!("- {violation}");
        }
    }
}

impl Drill {
    async fn run(&self, backend: &str, url: &str) -> Result<Report> {
        let mut report = Report::default();
        let smtp = Arc::new(SmtpServer::start().await);
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
            .to_string();
        let log_path = std::env::temp_dir().join(format!(
            "portcullis-crash-{}-{}.log",
            std::process::id(),
            backend.to_lowercase()
        ));
        let log = std::fs::File::create(&log_path)?;
        let smtp_url = smtp.url();
        let mut env: Vec<(&str, &str)> = ENV.to_vec();
        env.extend([("PORT", port.as_str()), ("SMTP_URL", smtp_url.as_str())]);
        let start = || -> Result<Server> { Server::spawn_logging_to(url, &env, log.try_clone()?) };

        let mut server = start()?;
        server.wait_for("/ready", Duration::from_millis(20)).await?;
        let api = Api::new(&server.base);
        make_admin(&api, url).await?;
        let mut workers: Vec<Worker> = (0..self.workers)
            .map(|n| Worker::new(n, self.seed))
            .collect();
        let mut rng = StdRng::seed_from_u64(self.seed);

        for round in 0..=self.rounds {
            let api = Api::new(&server.base);
            let admin = api.login_token(ADMIN_EMAIL, ADMIN_PASSWORD).await?;
            // Each worker checks its accounts against its ledger, then floods until the kill.
            let flood_for = Duration::from_millis(
                rng.random_range(50..=self.max_flood.as_millis().max(51) as u64),
            );
            let last = round == self.rounds;
            let checked = Arc::new(tokio::sync::Barrier::new(workers.len() + 1));
            let mut tasks = tokio::task::JoinSet::new();
            for mut worker in workers.drain(..) {
                let api = api.clone();
                let admin = admin.clone();
                let mail = Arc::clone(&smtp);
                let checked = Arc::clone(&checked);
                tasks.spawn(async move {
                    let mut found = Report::default();
                    worker.check(&api, last, &mut found).await;
                    checked.wait().await;
                    if !last {
                        worker.flood(&api, &admin, &mail, round, &mut found).await;
                    }
                    (worker, found)
                });
            }
            // The kill comes only once every check is done, anywhere in the flood.
            checked.wait().await;
            if !last {
                tokio::time::sleep(flood_for).await;
                server.kill();
            }
            while let Some(joined) = tasks.join_next().await {
                let (worker, found) = joined?;
                report.absorb(found);
                workers.push(worker);
            }
            if last {
                self.finish(&server, url, &workers, &smtp, &mut report)
                    .await?;
                break;
            }
            let restarted = Instant::now();
            server = start()?;
            server.wait_for("/ready", Duration::from_millis(5)).await?;
            report.restarts.push(restarted.elapsed());
        }
        drop(server);
        let log = std::fs::read_to_string(&log_path)?;
        report.log_errors = log.lines().filter(|l| l.contains("\"ERROR\"")).count();
        for panic in log.lines().filter(|l| l.contains("panicked")) {
            report.violation(format!("the service panicked: {panic}"));
        }
        println!("(the service's log: {})", log_path.display());
        Ok(report)
    }

    /// The final checks: the database against the ledgers, then every queued mail sent.
    async fn finish(
        &self,
        server: &Server,
        url: &str,
        workers: &[Worker],
        smtp: &SmtpServer,
        report: &mut Report,
    ) -> Result<()> {
        let db = Database::connect(url).await?;
        let base_version = scalar(
            &db,
            &format!("SELECT credential_version AS n FROM users WHERE email = '{ADMIN_EMAIL}'"),
        )
        .await?;
        for account in workers
            .iter()
            .flat_map(|w| w.accounts.iter().chain(&w.retired))
        {
            report.accounts += 1;
            account.check_stored(&db, base_version, report).await?;
        }
        let users = scalar(&db, "SELECT COUNT(*) AS n FROM users").await?;
        let registered = scalar(
            &db,
            "SELECT COUNT(*) AS n FROM audit_events WHERE kind = 'user.registered'",
        )
        .await?;
        // The admin registered as anyone else does.
        if users != registered {
            report.violation(format!(
                "{users} users but {registered} registration events"
            ));
        }
        let waited = Instant::now();
        loop {
            let pending = scalar(
                &db,
                "SELECT COUNT(*) AS n FROM mail_outbox WHERE state = 'pending'",
            )
            .await?;
            if pending == 0 {
                break;
            }
            if waited.elapsed() > MAIL_DEADLINE {
                report.violation(format!(
                    "{pending} mail jobs still pending {MAIL_DEADLINE:?} after the last restart"
                ));
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        report.mail_wait = waited.elapsed();
        let failed = scalar(
            &db,
            "SELECT COUNT(*) AS n FROM mail_outbox WHERE state = 'failed'",
        )
        .await?;
        if failed > 0 {
            report.violation(format!("{failed} mail jobs failed"));
        }
        let received = smtp.received();
        for account in workers
            .iter()
            .flat_map(|w| w.accounts.iter().chain(&w.retired))
        {
            account.check_reset_mail(&db, &received, report).await?;
        }
        server.wait_for("/ready", Duration::from_millis(20)).await?;
        db.close().await?;
        Ok(())
    }
}

impl Report {
    fn absorb(&mut self, other: Report) {
        for violation in other.violations {
            self.violation(violation);
        }
        for (op, n) in other.acked {
            *self.acked.entry(op).or_default() += n;
        }
        for (op, n) in other.in_doubt {
            *self.in_doubt.entry(op).or_default() += n;
        }
        self.doubts_applied += other.doubts_applied;
        self.doubts_not_applied += other.doubts_not_applied;
        self.checks += other.checks;
    }
}

/// Registers the admin and promotes it through the CLI, as an operator would.
async fn make_admin(api: &Api, url: &str) -> Result<()> {
    let (status, _) = api
        .post(
            "/auth/register",
            &json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}),
            None,
        )
        .await
        .map_err(|_| "the admin's registration was cut off")?;
    if status != 201 {
        return Err(format!("registering the admin answered {status}").into());
    }
    promote(url, ADMIN_EMAIL)
}

async fn scalar(db: &DatabaseConnection, sql: &str) -> Result<i64> {
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await?
        .ok_or("no row")?;
    Ok(row.try_get::<i64>("", "n")?)
}

/// A request whose answer never came: the service was killed first.
struct CutOff;

/// The drill's HTTP client; a new one per round, so no connection outlives a kill.
#[derive(Clone)]
struct Api {
    client: reqwest::Client,
    base: String,
}

impl Api {
    fn new(base: &str) -> Self {
        Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("a client"),
            base: base.to_owned(),
        }
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        token: Option<&str>,
    ) -> std::result::Result<(u16, Value), CutOff> {
        let request = match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request.send().await.map_err(|_| CutOff)?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(|_| CutOff)?;
        Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }

    async fn post(
        &self,
        path: &str,
        body: &Value,
        token: Option<&str>,
    ) -> std::result::Result<(u16, Value), CutOff> {
        let url = format!("{}{path}", self.base);
        self.send(self.client.post(url).json(body), token).await
    }

    async fn patch(
        &self,
        path: &str,
        body: &Value,
        token: &str,
    ) -> std::result::Result<(u16, Value), CutOff> {
        let url = format!("{}{path}", self.base);
        self.send(self.client.patch(url).json(body), Some(token))
            .await
    }

    async fn get(&self, path: &str, token: &str) -> std::result::Result<u16, CutOff> {
        let url = format!("{}{path}", self.base);
        Ok(self.send(self.client.get(url), Some(token)).await?.0)
    }

    async fn login(
        &self,
        email: &str,
        password: &str,
    ) -> std::result::Result<(u16, Value), CutOff> {
        self.post(
            "/auth/login",
            &json!({"email": email, "password": password}),
            None,
        )
        .await
    }

    async fn login_token(&self, email: &str, password: &str) -> Result<String> {
        match self.login(email, password).await {
            Ok((200, body)) => Ok(body["access_token"].as_str().ok_or("no token")?.to_owned()),
            Ok((status, body)) => Err(format!("login of {email}: {status} {body}").into()),
            Err(CutOff) => Err(format!("login of {email} got no answer").into()),
        }
    }
}

#[derive(Clone)]
struct Session {
    access: String,
    refresh: String,
    /// Ended by an answered logout, or by a change that ends it: it must stay refused.
    ended: bool,
}

impl Session {
    fn from_tokens(body: &Value) -> Option<Self> {
        Some(Self {
            access: body["access_token"].as_str()?.to_owned(),
            refresh: body["refresh_token"].as_str()?.to_owned(),
            ended: false,
        })
    }
}

/// A change whose answer never came, resolved after the restart.
#[derive(Clone, Debug)]
enum Doubt {
    Register,
    /// A session's logout or refresh: the session is dropped from the ledger either way (a
    /// refresh token presented again after a rotation would count as a reuse).
    Session(usize),
    /// A new password by change or reset; `keep` is the session a change keeps.
    Password {
        new: String,
        keep: Option<usize>,
        reset: bool,
    },
    Email {
        new: String,
        keep: usize,
    },
    Active(bool),
    Admin(bool),
    Totp,
}

/// What the drill knows of one account: what the service answered, and the changes that took
/// effect (answered 2xx, or cut off and found applied).
struct Account {
    email: String,
    password: String,
    exists: bool,
    id: Option<i64>,
    active: bool,
    admin: bool,
    totp: bool,
    sessions: Vec<Session>,
    doubt: Option<Doubt>,
    /// Applied changes per audit kind, and the credential-version bumps among them.
    events: HashMap<&'static str, i64>,
    bumps: i64,
    /// Reset mails asked for and answered 202, per address.
    forgot: HashMap<String, i64>,
    /// A deactivation took effect at some point: the outbox may have dropped its mail since.
    deactivated: bool,
}

impl Account {
    fn new(email: String, password: String) -> Self {
        Self {
            email,
            password,
            exists: false,
            id: None,
            active: true,
            admin: false,
            totp: false,
            sessions: Vec::new(),
            doubt: None,
            events: HashMap::new(),
            bumps: 0,
            forgot: HashMap::new(),
            deactivated: false,
        }
    }

    fn applied(&mut self, kind: &'static str, bumps: bool) {
        *self.events.entry(kind).or_default() += 1;
        self.bumps += i64::from(bumps);
    }

    /// Every session but `keep` ended.
    fn end_sessions(&mut self, keep: Option<usize>) {
        for (n, session) in self.sessions.iter_mut().enumerate() {
            if Some(n) != keep {
                session.ended = true;
            }
        }
    }

    fn new_password(&mut self, new: String, keep: Option<usize>, reset: bool) {
        self.password = new;
        self.end_sessions(keep);
        self.applied(
            if reset {
                "password.reset"
            } else {
                "password.changed"
            },
            true,
        );
    }

    fn new_email(&mut self, new: String, keep: usize) {
        self.email = new;
        self.end_sessions(Some(keep));
        self.applied("email.changed", true);
    }

    fn set_active(&mut self, active: bool) {
        self.active = active;
        if !active {
            self.deactivated = true;
            self.end_sessions(None);
        }
        self.applied("user.updated", !active);
    }

    fn set_admin(&mut self, admin: bool) {
        self.admin = admin;
        self.applied("user.updated", false);
    }

    fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.sessions.len()).filter(|&n| !self.sessions[n].ended)
    }

    fn follow(&mut self, session: Session) {
        self.sessions.push(session);
        if self.sessions.len() > SESSIONS_FOLLOWED {
            self.sessions.remove(0);
        }
    }

    /// Whether `password` logs in now: `Some(true)` for tokens or a second-factor step, and
    /// `Some(false)` for a refusal. The answer of an inactive account tells the password too.
    async fn logs_in(
        &self,
        api: &Api,
        email: &str,
        password: &str,
        found: &mut Report,
    ) -> Option<(bool, u16, Value)> {
        let (status, body) = api.login(email, password).await.ok()?;
        found.checks += 1;
        match status {
            200 => Some((true, status, body)),
            401 if body["detail"] == "Inactive user account" => Some((true, status, body)),
            401 => Some((false, status, body)),
            _ => {
                found.violation(format!("login of {email} answered {status} {body}"));
                None
            }
        }
    }

    /// Resolves the change cut off by the last kill from what the service says now.
    async fn resolve(&mut self, api: &Api, found: &mut Report) {
        let Some(doubt) = self.doubt.take() else {
            return;
        };
        let mut applied = false;
        match doubt.clone() {
            Doubt::Register => {
                let Some((works, ..)) = self.logs_in(api, &self.email, &self.password, found).await
                else {
                    return;
                };
                self.exists = works;
                applied = works;
                if works {
                    self.applied("user.registered", false);
                }
            }
            Doubt::Session(n) => {
                self.sessions.remove(n);
            }
            Doubt::Password { new, keep, reset } => {
                let new_works = self.logs_in(api, &self.email, &new, found).await;
                let old_works = self.logs_in(api, &self.email, &self.password, found).await;
                match (new_works, old_works) {
                    (Some((true, ..)), Some((false, ..))) => {
                        self.new_password(new, keep, reset);
                        applied = true;
                    }
                    (Some((false, ..)), Some((true, ..))) => {}
                    (new, old) => found.violation(format!(
                        "{}: after a cut-off password change, the new password logs in: {:?}, the old: {:?}",
                        self.email,
                        new.map(|n| n.0),
                        old.map(|o| o.0)
                    )),
                }
            }
            Doubt::Email { new, keep } => {
                let new_works = self.logs_in(api, &new, &self.password, found).await;
                let old_works = self.logs_in(api, &self.email, &self.password, found).await;
                match (new_works, old_works) {
                    (Some((true, ..)), Some((false, ..))) => {
                        self.new_email(new, keep);
                        applied = true;
                    }
                    (Some((false, ..)), Some((true, ..))) => {}
                    (new, old) => found.violation(format!(
                        "{}: after a cut-off address change, the new address logs in: {:?}, the old: {:?}",
                        self.email,
                        new.map(|n| n.0),
                        old.map(|o| o.0)
                    )),
                }
            }
            Doubt::Active(active) => {
                if let Some((_, status, body)) =
                    self.logs_in(api, &self.email, &self.password, found).await
                {
                    let inactive = status == 401 && body["detail"] == "Inactive user account";
                    if inactive != active {
                        self.set_active(active);
                        applied = true;
                    }
                }
            }
            Doubt::Admin(admin) => {
                if let Some((true, 200, body)) =
                    self.logs_in(api, &self.email, &self.password, found).await
                    && let Some(role) = role_of(&body)
                {
                    if (role == "admin") == admin {
                        self.set_admin(admin);
                        applied = true;
                    }
                    self.follow_login(&body);
                }
            }
            Doubt::Totp => {
                if let Some((true, 200, body)) =
                    self.logs_in(api, &self.email, &self.password, found).await
                {
                    if body["mfa_required"] == true {
                        self.totp = true;
                        self.applied("mfa.totp_enabled", false);
                        applied = true;
                    } else {
                        self.follow_login(&body);
                    }
                }
            }
        }
        if !matches!(doubt, Doubt::Session(_)) {
            if applied {
                found.doubts_applied += 1;
            } else {
                found.doubts_not_applied += 1;
            }
        }
    }

    fn follow_login(&mut self, body: &Value) {
        if let Some(session) = Session::from_tokens(body) {
            self.follow(session);
        }
    }

    /// Everything the ledger says, checked over HTTP.
    async fn check(&mut self, api: &Api, found: &mut Report) {
        self.resolve(api, found).await;
        if !self.exists {
            return;
        }
        let Some((works, status, body)) =
            self.logs_in(api, &self.email, &self.password, found).await
        else {
            return;
        };
        let inactive = status == 401 && body["detail"] == "Inactive user account";
        if !works || inactive == self.active {
            found.violation(format!(
                "{}: login answered {status} {body}; the ledger says active {}",
                self.email, self.active
            ));
            return;
        }
        if self.active {
            if (body["mfa_required"] == true) != self.totp {
                found.violation(format!(
                    "{}: TOTP is {}, but the login answered {body}",
                    self.email, self.totp
                ));
            }
            if let Some(role) = role_of(&body) {
                if (role == "admin") != self.admin {
                    found.violation(format!("{}: role {role}, admin {}", self.email, self.admin));
                }
                self.follow_login(&body);
            }
        }
        let mut kept = Vec::new();
        for mut session in std::mem::take(&mut self.sessions) {
            let refreshed = api
                .post(
                    "/auth/refresh",
                    &json!({"refresh_token": session.refresh}),
                    None,
                )
                .await;
            found.checks += 1;
            match (session.ended, refreshed) {
                (false, Ok((200, body))) => {
                    if let Some(fresh) = Session::from_tokens(&body) {
                        session = fresh;
                    }
                    kept.push(session);
                }
                (true, Ok((401, _))) => {
                    // Ended for good; its access token too.
                    if let Ok(status) = api.get("/protected/user", &session.access).await
                        && status != 401
                    {
                        found.violation(format!(
                            "{}: an ended session's access token answered {status}",
                            self.email
                        ));
                    }
                }
                (ended, Ok((status, body))) => found.violation(format!(
                    "{}: a session the ledger says is {} answered a refresh with {status} {body}",
                    self.email,
                    if ended { "ended" } else { "live" }
                )),
                (_, Err(CutOff)) => found.violation(format!("{}: no answer", self.email)),
            }
        }
        self.sessions = kept;
    }

    /// The database against the ledger: the account's row, its audit events per kind, its
    /// credential version and its reset mail.
    async fn check_stored(
        &self,
        db: &DatabaseConnection,
        base_version: i64,
        report: &mut Report,
    ) -> Result<()> {
        let email = &self.email;
        let rows = scalar(
            db,
            &format!("SELECT COUNT(*) AS n FROM users WHERE email = '{email}'"),
        )
        .await?;
        if rows != i64::from(self.exists) {
            report.violation(format!("{email}: {rows} rows, exists {}", self.exists));
        }
        let Some(id) = self.id.filter(|_| self.exists) else {
            return Ok(());
        };
        let version = scalar(
            db,
            &format!("SELECT credential_version AS n FROM users WHERE id = {id}"),
        )
        .await?;
        if version != base_version + self.bumps {
            report.violation(format!(
                "{email}: credential version {version}, expected {} + {}",
                base_version, self.bumps
            ));
        }
        for kind in [
            "user.registered",
            "password.changed",
            "password.reset",
            "email.changed",
            "user.updated",
            "mfa.totp_enabled",
        ] {
            let stored = scalar(
                db,
                &format!(
                    "SELECT COUNT(*) AS n FROM audit_events WHERE user_id = {id} AND kind = '{kind}'"
                ),
            )
            .await?;
            let expected = self.events.get(kind).copied().unwrap_or(0);
            if stored != expected {
                report.violation(format!(
                    "{email}: {stored} audit events {kind}, {expected} changes took effect"
                ));
            }
        }
        for (address, asked) in &self.forgot {
            let queued = scalar(
                db,
                &format!(
                    "SELECT COUNT(*) AS n FROM mail_outbox WHERE job = 'password_reset' AND email = '{address}'"
                ),
            )
            .await?;
            if queued < *asked {
                report.violation(format!(
                    "{address}: {asked} reset mails answered 202, {queued} queued"
                ));
            }
        }
        Ok(())
    }
}

impl Account {
    /// Every reset job queued for the address this account holds was delivered at least once
    /// (the outbox drops a job whose account was deactivated, so those accounts are left out).
    async fn check_reset_mail(
        &self,
        db: &DatabaseConnection,
        received: &[smtp::Received],
        report: &mut Report,
    ) -> Result<()> {
        if !self.exists || self.deactivated {
            return Ok(());
        }
        let email = &self.email;
        let queued = scalar(
            db,
            &format!(
                "SELECT COUNT(*) AS n FROM mail_outbox WHERE job = 'password_reset' AND email = '{email}'"
            ),
        )
        .await?;
        let delivered = received
            .iter()
            .filter(|m| m.to.iter().any(|to| to == email) && m.token("/console/reset").is_some())
            .count() as i64;
        if delivered < queued {
            report.violation(format!(
                "{email}: {queued} reset jobs queued, {delivered} reset mails received"
            ));
        }
        report.mail_queued += queued;
        report.mail_received += delivered;
        Ok(())
    }
}

fn role_of(tokens: &Value) -> Option<String> {
    use base64::Engine as _;
    let payload = tokens["access_token"].as_str()?.split('.').nth(1)?;
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .ok()?,
    )
    .ok()?;
    Some(claims["role"].as_str()?.to_owned())
}

/// One client of the flood, with the accounts it alone changes.
struct Worker {
    n: usize,
    rng: StdRng,
    accounts: Vec<Account>,
    /// Accounts no longer flooded (replaced, or with TOTP); checked at the end.
    retired: Vec<Account>,
    made: usize,
}

/// The flood's operations.
#[derive(Clone, Copy)]
enum Op {
    Register,
    Login,
    Refresh,
    Logout,
    ChangePassword,
    Reset,
    ChangeEmail,
    Deactivate,
    Reactivate,
    ToggleAdmin,
    EnrolTotp,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Register => "register",
            Op::Login => "login",
            Op::Refresh => "refresh",
            Op::Logout => "logout",
            Op::ChangePassword => "password change",
            Op::Reset => "password reset",
            Op::ChangeEmail => "email change",
            Op::Deactivate => "deactivation",
            Op::Reactivate => "reactivation",
            Op::ToggleAdmin => "role change",
            Op::EnrolTotp => "TOTP enrolment",
        }
    }
}

impl Worker {
    fn new(n: usize, seed: u64) -> Self {
        Self {
            n,
            rng: StdRng::seed_from_u64(seed ^ (n as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            accounts: Vec::new(),
            retired: Vec::new(),
            made: 0,
        }
    }

    /// Checks the accounts in the flood (in the last round, every account).
    async fn check(&mut self, api: &Api, last: bool, found: &mut Report) {
        if last {
            self.accounts.append(&mut self.retired);
        }
        for account in &mut self.accounts {
            account.check(api, found).await;
        }
        // A TOTP account logs in with a code from now on; the drill leaves it be.
        let (keep, retire) = std::mem::take(&mut self.accounts)
            .into_iter()
            .partition(|a| a.exists && !a.totp && !last);
        self.accounts = keep;
        self.retired.extend(retire);
    }

    /// Floods until an answer does not come: the kill.
    async fn flood(
        &mut self,
        api: &Api,
        admin: &str,
        mail: &SmtpServer,
        round: usize,
        found: &mut Report,
    ) {
        let mut inbox = Inbox {
            smtp: mail,
            seen: 0,
        };
        loop {
            let (op, at) = self.choose(round);
            let at = at.unwrap_or_else(|| self.new_account(round));
            let account = &mut self.accounts[at];
            match run(op, account, api, admin, &mut inbox, found).await {
                Ok(true) => *found.acked.entry(op.name()).or_default() += 1,
                Ok(false) => {}
                Err(CutOff) => {
                    *found.in_doubt.entry(op.name()).or_default() += 1;
                    return;
                }
            }
            // An account refused at registration, or with TOTP (it logs in with a code from now
            // on, and a reset of its unverified address may remove the factor), leaves the flood.
            let account = &self.accounts[at];
            if !account.exists || account.totp {
                self.retired.push(self.accounts.remove(at));
            }
        }
    }

    /// A new account in the flood (the oldest leaves it when there are enough): its index.
    fn new_account(&mut self, round: usize) -> usize {
        self.made += 1;
        let email = format!("crash-{round}-{}-{}@example.com", self.n, self.made);
        let password = format!("first password {}-{}", self.n, self.made);
        if self.accounts.len() == ACCOUNTS_PER_WORKER {
            self.retired.push(self.accounts.remove(0));
        }
        self.accounts.push(Account::new(email, password));
        self.accounts.len() - 1
    }

    /// The next operation, and the account it is for (`None`: a new one).
    fn choose(&mut self, round: usize) -> (Op, Option<usize>) {
        if self.accounts.is_empty() || self.rng.random_bool(0.08) {
            return (Op::Register, None);
        }
        let at = self.rng.random_range(0..self.accounts.len());
        let account = &self.accounts[at];
        if !account.active {
            return (Op::Reactivate, Some(at));
        }
        if account.live().next().is_none() {
            return (Op::Login, Some(at));
        }
        let op = match self.rng.random_range(0..100) {
            0..10 => Op::Login,
            10..40 => Op::Refresh,
            40..50 => Op::Logout,
            50..62 => Op::ChangePassword,
            62..72 => Op::Reset,
            72..80 => Op::ChangeEmail,
            80..86 => Op::Deactivate,
            86..95 => Op::ToggleAdmin,
            // Rarely, and not in the first rounds: a TOTP account leaves the flood.
            _ if round >= 2 => Op::EnrolTotp,
            _ => Op::Refresh,
        };
        (op, Some(at))
    }
}

/// Runs `op` on `account`: `Ok(true)` when the service answered 2xx (the ledger follows),
/// `Ok(false)` for an answered refusal, `Err(CutOff)` when no answer came (the account then
/// holds the doubt).
async fn run(
    op: Op,
    account: &mut Account,
    api: &Api,
    admin: &str,
    mail: &mut Inbox<'_>,
    found: &mut Report,
) -> std::result::Result<bool, CutOff> {
    let session = account.live().last();
    let token = session.map(|n| account.sessions[n].access.clone());
    let token = token.as_deref();
    let email = account.email.clone();
    let expect = |found: &mut Report, status: u16, wanted: u16, body: &Value| {
        if status != wanted {
            found.violation(format!("{email}: {} answered {status} {body}", op.name()));
        }
        status == wanted
    };
    // Set before each request, taken back once its answer came.
    macro_rules! doubtful {
        ($doubt:expr, $request:expr) => {{
            account.doubt = Some($doubt);
            let answer = $request.await?;
            account.doubt = None;
            answer
        }};
    }
    match op {
        Op::Register => {
            let body = json!({"email": account.email, "password": account.password});
            let (status, body) =
                doubtful!(Doubt::Register, api.post("/auth/register", &body, None));
            let ok = expect(found, status, 201, &body);
            if ok {
                account.exists = true;
                account.id = body["id"].as_i64();
                account.applied("user.registered", false);
            }
            Ok(ok)
        }
        Op::Login => {
            let (status, body) = api.login(&account.email, &account.password).await?;
            let ok = expect(found, status, 200, &body);
            if ok {
                account.follow_login(&body);
            }
            Ok(ok)
        }
        Op::Refresh | Op::Logout => {
            let n = session.expect("a live session");
            let refresh = account.sessions[n].refresh.clone();
            let (status, body) = if matches!(op, Op::Refresh) {
                doubtful!(
                    Doubt::Session(n),
                    api.post("/auth/refresh", &json!({"refresh_token": refresh}), None)
                )
            } else {
                doubtful!(
                    Doubt::Session(n),
                    api.post("/auth/logout", &json!({}), token)
                )
            };
            let wanted = if matches!(op, Op::Refresh) { 200 } else { 204 };
            let ok = expect(found, status, wanted, &body);
            match (ok, Session::from_tokens(&body)) {
                (true, Some(fresh)) => account.sessions[n] = fresh,
                (true, None) => account.sessions[n].ended = true,
                (false, _) => {}
            }
            Ok(ok)
        }
        Op::ChangePassword => {
            let new = fresh("changed password");
            let body = json!({"current_password": account.password, "new_password": new});
            let (status, body) = doubtful!(
                Doubt::Password {
                    new: new.clone(),
                    keep: session,
                    reset: false
                },
                api.post("/auth/password", &body, token)
            );
            let ok = expect(found, status, 204, &body);
            if ok {
                account.new_password(new, session, false);
            }
            Ok(ok)
        }
        Op::Reset => {
            mail.catch_up();
            let body = json!({"email": account.email});
            let (status, body) = api.post("/auth/password/forgot", &body, None).await?;
            if !expect(found, status, 202, &body) {
                return Ok(false);
            }
            *account.forgot.entry(account.email.clone()).or_default() += 1;
            let Some(link) = mail.link(&account.email, "/console/reset").await else {
                return Ok(true); // the kill came first; the mail is owed all the same
            };
            let new = fresh("reset password");
            let body = json!({"token": link, "new_password": new});
            let (status, body) = doubtful!(
                Doubt::Password {
                    new: new.clone(),
                    keep: None,
                    reset: true
                },
                api.post("/auth/password/reset", &body, None)
            );
            // A link spent by a change in between is refused; anything else is a fault.
            if status == 400 {
                return Ok(false);
            }
            let ok = expect(found, status, 204, &body);
            if ok {
                account.new_password(new, None, true);
            }
            Ok(ok)
        }
        Op::ChangeEmail => {
            let n = session.expect("a live session");
            // A new address each time: a late link for an earlier one must not pass for this.
            let new = format!("{}@example.com", fresh("moved"));
            mail.catch_up();
            let body = json!({"new_email": new, "current_password": account.password});
            let (status, body) = api.post("/auth/email", &body, token).await?;
            if !expect(found, status, 202, &body) {
                return Ok(false);
            }
            let Some(link) = mail.link(&new, "/console/email").await else {
                return Ok(true);
            };
            let (status, body) = doubtful!(
                Doubt::Email {
                    new: new.clone(),
                    keep: n
                },
                api.post("/auth/email/confirm", &json!({"token": link}), None)
            );
            if status == 400 {
                return Ok(false);
            }
            let ok = expect(found, status, 200, &body);
            if ok {
                account.new_email(new, n);
            }
            Ok(ok)
        }
        Op::Deactivate | Op::Reactivate | Op::ToggleAdmin => {
            let Some(id) = account.id else {
                return Ok(false);
            };
            let (body, doubt) = match op {
                Op::ToggleAdmin => {
                    let role = if account.admin { "user" } else { "admin" };
                    (json!({"role": role}), Doubt::Admin(!account.admin))
                }
                _ => {
                    let active = matches!(op, Op::Reactivate);
                    (json!({"is_active": active}), Doubt::Active(active))
                }
            };
            let (status, answer) = doubtful!(
                doubt.clone(),
                api.patch(&format!("/admin/users/{id}"), &body, admin)
            );
            let ok = expect(found, status, 200, &answer);
            if ok {
                match doubt {
                    Doubt::Admin(admin) => account.set_admin(admin),
                    Doubt::Active(active) => account.set_active(active),
                    _ => unreachable!("an admin change"),
                }
            }
            Ok(ok)
        }
        Op::EnrolTotp => {
            let body = json!({"current_password": account.password});
            let (status, body) = api.post("/auth/mfa/totp", &body, token).await?;
            if !expect(found, status, 200, &body) {
                return Ok(false);
            }
            let code = body["secret"]
                .as_str()
                .and_then(totp_code)
                .unwrap_or_default();
            let (status, body) = doubtful!(
                Doubt::Totp,
                api.post("/auth/mfa/totp/confirm", &json!({"code": code}), token)
            );
            let ok = expect(found, status, 200, &body);
            if ok {
                account.totp = true;
                account.applied("mfa.totp_enabled", false);
            }
            Ok(ok)
        }
    }
}

/// A value never used before in this run: a new password or address (a late link or an old
/// password must never pass for the new one).
fn fresh(what: &str) -> String {
    static MADE: AtomicUsize = AtomicUsize::new(0);
    format!("{what} {}", MADE.fetch_add(1, Ordering::Relaxed)).replace(' ', "-")
}

/// A worker's view of the drill's SMTP server: what it has seen, and what came since.
struct Inbox<'a> {
    smtp: &'a SmtpServer,
    seen: usize,
}

impl Inbox<'_> {
    /// Skips every message received so far.
    fn catch_up(&mut self) {
        self.seen += self.smtp.received_since(self.seen).len();
    }

    /// The token of a link to `path` in a message to `to` received since [`Inbox::catch_up`],
    /// waiting for it at most [`MAIL_WAIT`].
    async fn link(&mut self, to: &str, path: &str) -> Option<String> {
        let deadline = Instant::now() + MAIL_WAIT;
        let mut scanned = self.seen;
        while Instant::now() < deadline {
            let new = self.smtp.received_since(scanned);
            scanned += new.len();
            if let Some(token) = new
                .iter()
                .filter(|m| m.to.iter().any(|r| r == to))
                .find_map(|m| m.token(path))
            {
                return Some(token);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}
