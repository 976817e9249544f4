//! Backups taken during a write flood restore every write acknowledged before they began:
//! `portcullis backup` on SQLite, and the documented `pg_dump` / `pg_restore` path on
//! PostgreSQL. Also what the command refuses.

use std::collections::HashMap;
use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use reqwest::{Client, StatusCode};
use sea_orm::{ConnectionTrait, Database, Statement};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::helpers::{Backend, PASSWORD, TestApp, TestDb, run_cli, settings};

const NEW_PASSWORD: &str = "a brand new passphrase";
/// Writers in the flood.
const WRITERS: usize = 4;
/// Registrations acknowledged before the backup starts, at least.
const BEFORE: usize = 40;

/// What the flood knows of a user: the password last answered as set, and the new one it
/// sent, once sent (a backup that began before the answer may or may not hold it).
#[derive(Debug, Clone)]
struct Known {
    acknowledged: &'static str,
    sent: Option<&'static str>,
}

type Ledger = Arc<Mutex<HashMap<String, Known>>>;

/// Writers registering users as fast as the app answers; every third user also logs in and
/// changes their password.
struct Flood {
    ledger: Ledger,
    stop: Arc<AtomicBool>,
    writers: JoinSet<()>,
}

impl Flood {
    fn start(app: &TestApp) -> Self {
        let ledger = Ledger::default();
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = JoinSet::new();
        for writer in 0..WRITERS {
            let (client, base) = (app.client.clone(), app.url(""));
            let (ledger, stop) = (Arc::clone(&ledger), Arc::clone(&stop));
            writers.spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let email = format!("flood-{writer}-{n}@example.com");
                    write_one(&client, &base, &email, n % 3 == 0, &ledger).await;
                    n += 1;
                }
            });
        }
        Self {
            ledger,
            stop,
            writers,
        }
    }

    fn acknowledged(&self) -> usize {
        self.ledger.lock().unwrap().len()
    }

    async fn until_acknowledged(&self, count: usize) {
        while self.acknowledged() < count {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Runs `backup` (blocking: a child process) with the flood going, and returns what had
    /// been acknowledged when it began. Checks that writes were acknowledged while it ran: a
    /// backup that blocked the writers would see none. On a loaded machine a quick backup can
    /// fall between two acknowledgements, so it is taken again (over the last one) until one
    /// overlaps a write, five times at most.
    async fn during(
        &self,
        backup: impl Fn() -> Output + Send + Sync + 'static,
    ) -> HashMap<String, Known> {
        self.until_acknowledged(BEFORE).await;
        let backup = std::sync::Arc::new(backup);
        for _ in 0..5 {
            let before = self.ledger.lock().unwrap().clone();
            let run = std::sync::Arc::clone(&backup);
            let output = tokio::task::spawn_blocking(move || run()).await.unwrap();
            assert!(
                output.status.success(),
                "the backup failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            if self.acknowledged() > before.len() {
                return before;
            }
        }
        panic!("no write was acknowledged while any of five backups ran");
    }

    /// Stops the writers: what the flood knows at the end.
    async fn stop(mut self) -> HashMap<String, Known> {
        self.stop.store(true, Ordering::Relaxed);
        while let Some(done) = self.writers.join_next().await {
            done.unwrap();
        }
        self.ledger.lock().unwrap().clone()
    }
}

async fn write_one(client: &Client, base: &str, email: &str, change: bool, ledger: &Ledger) {
    let post = |path: &str, body: Value| client.post(format!("{base}{path}")).json(&body).send();
    let credentials = json!({"email": email, "password": PASSWORD});
    let registered = post("/auth/register", credentials.clone()).await.unwrap();
    assert_eq!(registered.status(), StatusCode::CREATED, "{email}");
    let known = Known {
        acknowledged: PASSWORD,
        sent: None,
    };
    ledger.lock().unwrap().insert(email.to_owned(), known);
    if !change {
        return;
    }
    let login = post("/auth/login", credentials).await.unwrap();
    assert_eq!(login.status(), StatusCode::OK, "{email}");
    let token = login.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    ledger.lock().unwrap().get_mut(email).unwrap().sent = Some(NEW_PASSWORD);
    let changed = client
        .post(format!("{base}/auth/password"))
        .bearer_auth(token)
        .json(&json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), StatusCode::NO_CONTENT, "{email}");
    ledger.lock().unwrap().get_mut(email).unwrap().acknowledged = NEW_PASSWORD;
}

/// Every user acknowledged `before` the backup logs in on the restored app with the password
/// acknowledged then, or with the one the flood sent `after` that (which the backup may hold).
async fn all_log_in(
    restored: &TestApp,
    before: &HashMap<String, Known>,
    after: &HashMap<String, Known>,
) {
    for (email, known) in before {
        let mut status = restored.login(email, known.acknowledged).await.status();
        if status != StatusCode::OK
            && let Some(newer) = after[email].sent
        {
            status = restored.login(email, newer).await.status();
        }
        assert_eq!(status, StatusCode::OK, "{email} was lost ({known:?})");
    }
}

fn overrides() -> Value {
    json!({"rate_limits_enabled": false})
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `PRAGMA integrity_check` on a SQLite file, opened read-only.
async fn integrity(file: &Path) -> String {
    let db = Database::connect(format!("sqlite://{}?mode=ro", file.display()))
        .await
        .unwrap();
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "PRAGMA integrity_check",
        ))
        .await
        .unwrap()
        .unwrap();
    let verdict: String = row.try_get_by_index(0).unwrap();
    db.close().await.unwrap();
    verdict
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_backup_taken_during_a_write_flood_restores_every_acknowledged_user() {
    let db = TestDb::create(Backend::Sqlite).await.unwrap();
    let mut app = TestApp::spawn(settings(db.url(), overrides())).await;
    let folder = tempfile::tempdir().unwrap();
    let file = folder.path().join("portcullis-backup.db");

    let flood = Flood::start(&app);
    let (url, to) = (db.url().to_owned(), file.display().to_string());
    let before = flood
        .during(move || run_cli(&url, &[], &["backup", "--to", &to, "--json", "--force"], ""))
        .await;
    let after = flood.stop().await;
    app.stop().await;

    assert_eq!(integrity(&file).await, "ok");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "a backup holds password hashes");
    }
    let names: Vec<_> = std::fs::read_dir(folder.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        ["portcullis-backup.db"],
        "nothing else is left beside it"
    );

    // Restore as the operations page says: the file alone into a fresh place, then start.
    let fresh = tempfile::tempdir().unwrap();
    let restored_file = fresh.path().join("portcullis.db");
    std::fs::copy(&file, &restored_file).unwrap();
    let url = format!("sqlite://{}?mode=rwc", restored_file.display());
    let mut restored = TestApp::spawn(settings(&url, overrides())).await;
    all_log_in(&restored, &before, &after).await;
    restored.stop().await;
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_reports_what_it_copied_and_refuses_to_overwrite_without_force() {
    let db = TestDb::create(Backend::Sqlite).await.unwrap();
    let mut app = TestApp::spawn(settings(db.url(), overrides())).await;
    for n in 0..3 {
        app.signed_up(&format!("user{n}@example.com")).await;
    }
    let folder = tempfile::tempdir().unwrap();
    let file = folder.path().join("backup.db");
    let to = file.display().to_string();
    let backup = |args: &[&str]| run_cli(db.url(), &[], args, "");

    let first = backup(&["backup", "--to", &to, "--json"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let report: Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(report["users"], 3);
    assert_eq!(report["path"], to.as_str());
    assert_eq!(report["bytes"], std::fs::metadata(&file).unwrap().len());
    assert!(report["pages"].as_u64().unwrap() > 0, "{report}");
    let seconds = report["seconds"].as_f64().unwrap();
    assert!(
        (0.0..=seconds).contains(&report["copy_seconds"].as_f64().unwrap()),
        "{report}"
    );

    app.signed_up("user3@example.com").await;
    let again = backup(&["backup", "--to", &to]);
    assert_eq!(again.status.code(), Some(2), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("exists: choose another file, or pass --force"),
        "{}",
        stderr(&again)
    );
    let forced = backup(&["backup", "--to", &to, "--force"]);
    assert!(forced.status.success(), "{}", stderr(&forced));
    let text = String::from_utf8_lossy(&forced.stdout);
    assert!(text.contains(&format!(" to {to}\n4 users, ")), "{text}");

    // The live database itself, even with --force: the rename would destroy it.
    let live = db
        .url()
        .trim_start_matches("sqlite://")
        .trim_end_matches("?mode=rwc");
    let onto_itself = backup(&["backup", "--to", live, "--force"]);
    assert_eq!(
        onto_itself.status.code(),
        Some(2),
        "{}",
        stderr(&onto_itself)
    );
    assert!(stderr(&onto_itself).contains("is the live database"));
    assert_eq!(app.login("user3@example.com", PASSWORD).await.status(), 200);

    // A folder that does not exist: a failure (1), nothing written.
    let nowhere = folder.path().join("missing/backup.db");
    let failed = backup(&["backup", "--to", &nowhere.display().to_string()]);
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
    assert!(
        stderr(&failed).contains("backup failed"),
        "{}",
        stderr(&failed)
    );
    app.stop().await;
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_of_postgresql_or_memory_is_refused_with_the_way_to_do_it() {
    let folder = tempfile::tempdir().unwrap();
    let to = folder.path().join("backup.db").display().to_string();
    let memory = run_cli("memory://", &[], &["backup", "--to", &to], "");
    assert_eq!(memory.status.code(), Some(2), "{}", stderr(&memory));
    assert!(
        stderr(&memory).contains("nothing to back up"),
        "{}",
        stderr(&memory)
    );

    let Some(db) = TestDb::create(Backend::Postgres).await else {
        return;
    };
    let postgres = run_cli(db.url(), &[], &["backup", "--to", &to], "");
    let message = stderr(&postgres);
    assert_eq!(postgres.status.code(), Some(2), "{message}");
    for what in [
        "pg_dump -Fc",
        "pg_restore",
        "archive_command",
        "recovery_target_time",
    ] {
        assert!(message.contains(what), "{what} is not named: {message}");
    }
    assert!(!Path::new(&to).exists());
    db.drop_database().await;
}

/// Runs `program` with `args`, as an operator would.
fn tool(program: &str, args: &[&str]) -> Output {
    std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run {program} (postgresql-client): {err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pg_dump_taken_during_a_write_flood_restores_every_acknowledged_user() {
    let Some(db) = TestDb::create(Backend::Postgres).await else {
        return;
    };
    let mut app = TestApp::spawn(settings(db.url(), overrides())).await;
    let folder = tempfile::tempdir().unwrap();
    let dump = folder.path().join("portcullis.dump").display().to_string();

    let flood = Flood::start(&app);
    let (url, file) = (db.url().to_owned(), dump.clone());
    let before = flood
        .during(move || tool("pg_dump", &["-Fc", "-d", &url, "-f", &file]))
        .await;
    let after = flood.stop().await;
    app.stop().await;

    // The documented restore: into a new, empty database, without the dumping role's ownership.
    let fresh = TestDb::create(Backend::Postgres).await.unwrap();
    let restored_dump = tool("pg_restore", &["--no-owner", "-d", fresh.url(), &dump]);
    assert!(restored_dump.status.success(), "{}", stderr(&restored_dump));
    let mut restored = TestApp::spawn(settings(fresh.url(), overrides())).await;
    all_log_in(&restored, &before, &after).await;
    restored.stop().await;
    fresh.drop_database().await;
    db.drop_database().await;
}
