//! The SQLite drills: the file's disk fills up, the file becomes read-only.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, Database};

use super::server::{Result, Server, setting};
use super::{
    Load, Op, Verdict, env_refs, expect_bounded_answers, first_success_after, free_port,
    is_success, ms, of, run, server_env, started_within, summary, unavailable_figures,
};

/// The line the server logs at each write its storage refuses.
const STORAGE_LOG: &str = "the database cannot write";

/// A small file system of the drill's own, unmounted when dropped, whatever happened.
struct Mounted {
    dir: tempfile::TempDir,
    point: PathBuf,
}

impl Mounted {
    fn new() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let point = dir.path().join("mnt");
        std::fs::create_dir(&point)?;
        Ok(Self { dir, point })
    }

    /// A tmpfs of `size` (`8m`).
    fn tmpfs(size: &str) -> Result<Self> {
        let mounted = Self::new()?;
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&mounted.point))?;
        Ok(mounted)
    }

    /// An ext4 file system of `mib` MiB in a file, on a loop device.
    fn ext4(mib: u64) -> Result<Self> {
        let mounted = Self::new()?;
        let image = mounted.dir.path().join("fs.img");
        std::fs::File::create(&image)?.set_len(mib << 20)?;
        run(Command::new("mkfs.ext4").arg("-q").arg(&image))?;
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mounted.point))?;
        Ok(mounted)
    }

    fn remount(&self, mode: &str) -> Result<()> {
        run(Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(&self.point))
    }

    /// The server's log: beside the mount, not on it, so that it is written whatever the
    /// drill does to the file system.
    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn database(&self) -> PathBuf {
        self.point.join("portcullis.db")
    }

    fn url(&self) -> String {
        format!("sqlite://{}?mode=rwc", self.database().display())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg(&self.point).status();
        if !unmounted.is_ok_and(|status| status.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.point).status();
        }
    }
}

/// Spawns the server on `mounted`'s database, its log in `log`.
fn spawn(mounted: &Mounted, metrics: u16, log: &str) -> Result<Server> {
    let env = server_env(metrics);
    Server::spawn_logging_to(
        &mounted.url(),
        &env_refs(&env),
        std::fs::File::create(mounted.log(log))?,
    )
}

/// Spawns the server and waits until it answers.
async fn start(mounted: &Mounted, metrics: u16, log: &str) -> Result<Server> {
    let server = spawn(mounted, metrics, log)?;
    server
        .wait_for("/health", Duration::from_millis(50))
        .await?;
    Ok(server)
}

/// Appends zeros to `path` until the file system refuses: the bytes written.
fn fill(path: &Path) -> Result<u64> {
    let mut filler = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let chunk = vec![0_u8; 64 * 1024];
    let mut written = 0;
    loop {
        match filler.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => written += n as u64,
        }
    }
    // Whatever is left in the page cache is flushed, or refused, now.
    let _ = filler.sync_all();
    Ok(written)
}

/// `PRAGMA integrity_check` on `file`, and which of `registered` the `users` table lacks.
async fn inspect(file: &Path, registered: &[String]) -> Result<(String, Vec<String>)> {
    let db = Database::connect(format!("sqlite://{}?mode=rw", file.display())).await?;
    let integrity: String = db
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Sqlite,
            "PRAGMA integrity_check",
        ))
        .await?
        .ok_or("no answer to integrity_check")?
        .try_get_by_index(0)?;
    let rows = db
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Sqlite,
            "SELECT email FROM users",
        ))
        .await?;
    let present: std::collections::HashSet<String> = rows
        .iter()
        .filter_map(|row| row.try_get::<String>("", "email").ok())
        .collect();
    db.close().await?;
    let missing = registered
        .iter()
        .filter(|email| !present.contains(*email))
        .cloned()
        .collect();
    Ok((integrity, missing))
}

/// Lines of the log at `path` that contain `text`.
fn log_lines(path: &Path, text: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains(text))
        .count()
}

/// What both drills check of a fault window and the recovery after: `fault` and `cleared` are
/// when the fault began and ended.
async fn fault_window(
    verdict: &mut Verdict,
    what: &str,
    load: &Load,
    fault: Instant,
    cleared: Instant,
) -> Option<Duration> {
    let mut first_write = None;
    while first_write.is_none() && cleared.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        first_write = first_success_after(&of(&load.samples(), Op::Register), cleared, true);
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let samples = load.samples();
    let during = started_within(&samples, fault, cleared);
    let after = started_within(
        &samples,
        Instant::now() - Duration::from_secs(5),
        Instant::now(),
    );
    for op in [Op::Register, Op::Login, Op::Refresh, Op::Check, Op::Ready] {
        println!(
            "- {what}, {op:?}: {}",
            summary(&of(&during, op), cleared - fault)
        );
    }
    println!("  - {}", unavailable_figures(&during));
    println!(
        "- {what} cleared -> first registration answered 201: {}",
        first_write.map_or("never".into(), |d| format!("{} ms", ms(d)))
    );
    println!(
        "- the 5 s after: {}",
        summary(&after, Duration::from_secs(5))
    );
    expect_bounded_answers(verdict, what, &during);
    verdict.expect(
        of(&during, Op::Register).iter().any(|s| s.status == 503),
        format!("{what}: registrations answered 503"),
    );
    verdict.expect(
        of(&during, Op::Check).iter().all(|s| s.status == 200)
            && of(&during, Op::Ready).iter().all(|s| s.status == 200),
        format!("{what}: token checks and readiness still answered 200"),
    );
    verdict.expect(
        first_write.is_some_and(|d| d < Duration::from_secs(5)),
        format!("{what}: registrations answered 201 within 5 s once it cleared, without a restart"),
    );
    verdict.expect(
        !after.is_empty() && after.iter().all(|s| is_success(s.status)),
        format!("{what}: no error in the 5 s after"),
    );
    first_write
}

pub async fn full(verdict: &mut Verdict) -> Result<()> {
    println!("\n## sqlite-full\n");
    let mounted = Mounted::tmpfs("8m")?;
    let metrics = free_port()?;
    let mut server = start(&mounted, metrics, "full.log").await?;
    let workers: usize = setting("FAULTS_WORKERS", 6);
    // Half the workers only register: a flood of writes that fills the file.
    let load = Load::closed(&server, "full", workers, workers / 2).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let filler = mounted.point.join("filler");
    let fault = Instant::now();
    let mut written = fill(&filler)?;
    // Writes go on while SQLite can reuse its WAL's space; they fail once the WAL must grow
    // (a checkpoint cannot grow the main file). The fault is held until then, and on for the
    // outage's length after; whatever space is freed meanwhile is taken again.
    let mut refused = None;
    let outage = Duration::from_secs(setting("FAULTS_OUTAGE_SECONDS", 4));
    while refused.is_none_or(|at: Instant| at.elapsed() < outage)
        && fault.elapsed() < Duration::from_secs(120)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        written += fill(&filler)?;
        if refused.is_none() {
            refused = of(&load.samples(), Op::Register)
                .iter()
                .find(|s| s.started >= fault && s.status == 503)
                .map(|s| s.ended());
        }
    }
    std::fs::remove_file(&filler)?;
    let cleared = Instant::now();
    println!(
        "An 8 MiB tmpfs; {workers} clients ({} only registering); a filler of {:.1} MiB took \
         the rest of the space for {} s. Writes still succeeded for {} after it was full (SQLite \
         reusing its WAL), and were refused from then on.\n",
        workers / 2,
        written as f64 / f64::from(1 << 20),
        (cleared - fault).as_secs(),
        refused.map_or("the whole time".into(), |at| format!(
            "{} ms",
            ms(at - fault)
        )),
    );
    fault_window(verdict, "disk full", &load, fault, cleared).await;
    let registered = load.registered();
    load.stop().await;
    let alive = server.exited().is_none();
    drop(server);
    let (integrity, missing) = inspect(&mounted.database(), &registered).await?;
    let log = mounted.log("full.log");
    let (storage, panics) = (log_lines(&log, STORAGE_LOG), log_lines(&log, "panicked"));
    println!(
        "- after a kill -9: integrity_check {integrity:?}; {} registrations answered 201, {} \
         of them missing; {storage} log lines \"{STORAGE_LOG} ...\", {panics} panics",
        registered.len(),
        missing.len()
    );
    verdict.expect(
        alive,
        "disk full: Portcullis ran throughout, never restarted",
    );
    verdict.expect(integrity == "ok", "disk full: PRAGMA integrity_check = ok");
    verdict.expect(
        missing.is_empty(),
        "disk full: every registration answered 201 is in the file",
    );
    verdict.expect(
        storage > 0 && panics == 0,
        "disk full: logged as a storage fault, no panic",
    );
    Ok(())
}

pub async fn read_only(verdict: &mut Verdict) -> Result<()> {
    println!("\n## sqlite-readonly\n");
    let mounted = Mounted::ext4(32)?;
    let metrics = free_port()?;
    let mut server = start(&mounted, metrics, "running.log").await?;
    let workers: usize = setting("FAULTS_WORKERS", 6);
    let load = Load::closed(&server, "readonly", workers, workers / 2).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let database = mounted.database();
    let files = [
        database.clone(),
        PathBuf::from(format!("{}-wal", database.display())),
    ];
    let fault = Instant::now();
    run(Command::new("chattr").arg("+i").args(&files))?;
    tokio::time::sleep(Duration::from_secs(setting("FAULTS_OUTAGE_SECONDS", 4))).await;
    run(Command::new("chattr").arg("-i").args(&files))?;
    let cleared = Instant::now();
    println!(
        "A 32 MiB ext4 file system on a loop device; {workers} clients ({} only registering); \
         the database and its WAL immutable (chattr +i) for {} s.\n",
        workers / 2,
        (cleared - fault).as_secs()
    );
    fault_window(verdict, "read-only file", &load, fault, cleared).await;
    let registered = load.registered();
    load.stop().await;
    verdict.expect(
        server.exited().is_none(),
        "read-only file: Portcullis ran throughout, never restarted",
    );
    let log = mounted.log("running.log");
    let (storage, panics) = (log_lines(&log, STORAGE_LOG), log_lines(&log, "panicked"));
    println!("- {storage} log lines \"{STORAGE_LOG} ...\", {panics} panics");
    verdict.expect(
        storage > 0 && panics == 0,
        "read-only file: logged as a storage fault, no panic",
    );
    drop(server);

    // A start on a read-only file system: the file cannot be opened for writing at all.
    mounted.remount("ro")?;
    let mut refused = spawn(&mounted, free_port()?, "start.log")?;
    let started = Instant::now();
    let mut exit = None;
    while exit.is_none() && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        exit = refused.exited();
    }
    let message = std::fs::read_to_string(mounted.log("start.log")).unwrap_or_default();
    let said = message
        .lines()
        .find(|line| line.contains("cannot write to the SQLite database"))
        .unwrap_or("(nothing)");
    println!(
        "- a start on a read-only mount: exit {exit:?} after {} ms, saying: {said}",
        ms(started.elapsed())
    );
    verdict.expect(
        exit.is_some_and(|status| !status.success()),
        "a start on a read-only file fails",
    );
    drop(refused);
    verdict.expect(said != "(nothing)", "a start on a read-only file says why");
    mounted.remount("rw")?;
    let again = start(&mounted, free_port()?, "again.log").await;
    let login = match &again {
        Ok(server) => match registered.first() {
            Some(email) => server.access_token(email, super::PASSWORD).await.is_ok(),
            None => false,
        },
        Err(_) => false,
    };
    println!(
        "- writable again: the server starts ({}), a user registered before logs in ({login})",
        again.is_ok()
    );
    verdict.expect(
        again.is_ok() && login,
        "writable again: it starts and serves",
    );
    drop(again);
    let (integrity, missing) = inspect(&database, &registered).await?;
    println!(
        "- integrity_check {integrity:?}; {} registrations answered 201, {} of them missing",
        registered.len(),
        missing.len()
    );
    verdict.expect(
        integrity == "ok" && missing.is_empty(),
        "read-only file: the file intact, every registration answered 201 in it",
    );
    Ok(())
}
