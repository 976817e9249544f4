//! What an operator and a platform rely on: a graceful stop with requests in flight, the
//! management listener, and `portcullis health`.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use portcullis::startup::Application;

use crate::helpers::{Backend, SECRET, TestApp, TestDb, run_cli, settings};

/// A port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `portcullis serve` as a process of its own, so that it can be signalled and its exit code
/// read.
struct Served {
    child: Child,
    port: u16,
}

impl Served {
    fn start(db_url: &str, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("serve")
            .env("PORTCULLIS_PROFILE", "test")
            .env("DATABASE_URL", db_url)
            .env("SECRET_KEY", SECRET)
            .env("BCRYPT_COST", "4")
            .env("PORT", port.to_string())
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run portcullis serve");
        let served = Self { child, port };
        let started = Instant::now();
        while served.get("/health").is_none() {
            assert!(started.elapsed() < Duration::from_secs(30), "never served");
            std::thread::sleep(Duration::from_millis(50));
        }
        served
    }

    /// The status of a GET on a new connection, or `None` when nothing accepts it.
    fn get(&self, path: &str) -> Option<u16> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        status_of(&mut stream)
    }

    fn terminate(&self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    /// The exit code, waiting at most `within`.
    fn exit_code(&mut self, within: Duration) -> Option<i32> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if started.elapsed() > within {
                self.child.kill().ok();
                panic!("still running {within:?} after the signal");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn status_of(stream: &mut TcpStream) -> Option<u16> {
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).ok()?;
    let text = String::from_utf8_lossy(&answer);
    text.get(9..12)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_finishes_the_request_in_flight_and_exits_zero() {
    let db = TestDb::create(Backend::Sqlite).await.unwrap();
    let url = db.url().to_owned();
    let result = tokio::task::spawn_blocking(move || {
        let mut served = Served::start(&url, &[("SHUTDOWN_DRAIN_SECONDS", "1")]);
        assert_eq!(served.get("/ready"), Some(200));
        // A login whose body is still on its way when the signal comes.
        let body = json!({"email": "late@example.com", "password": "whatever it is"}).to_string();
        let (first, rest) = body.split_at(10);
        let mut in_flight = TcpStream::connect(("127.0.0.1", served.port)).unwrap();
        in_flight
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            in_flight,
            "POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{first}",
            body.len()
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let signalled = Instant::now();
        served.terminate();
        std::thread::sleep(Duration::from_millis(200));
        // Draining: taken out of rotation, still serving new connections.
        assert_eq!(served.get("/ready"), Some(503));
        assert_eq!(served.get("/health"), Some(200));
        in_flight.write_all(rest.as_bytes()).unwrap();
        assert_eq!(
            status_of(&mut in_flight),
            Some(401),
            "the request in flight is answered"
        );
        assert_eq!(served.exit_code(Duration::from_secs(15)), Some(0));
        let took = signalled.elapsed();
        assert!(
            took >= Duration::from_secs(1),
            "left before the drain: {took:?}"
        );
        // Gone: nothing accepts any more.
        assert_eq!(served.get("/health"), None);
    })
    .await;
    db.drop_database().await;
    result.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_to_the_management_listener_and_leave_the_api() {
    let db = TestDb::create(Backend::Sqlite).await.unwrap();
    let mut app =
        TestApp::spawn(settings(db.url(), json!({"metrics_listen": "127.0.0.1:0"}))).await;
    let get = |path: &str| app.client.get(app.url(path)).send();
    assert_eq!(get("/public").await.unwrap().status(), 200);
    let on_api = get("/metrics").await.unwrap();
    assert_eq!(on_api.status(), 404);
    let management = app.metrics_address.clone().expect("a management listener");
    let scraped = app
        .client
        .get(format!("{management}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(scraped.status(), 200);
    assert!(
        scraped.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    assert!(
        scraped
            .text()
            .await
            .unwrap()
            .contains("portcullis_http_requests_total")
    );
    // Nothing else is served there.
    for path in ["/public", "/health", "/auth/login", "/docs"] {
        let other = app
            .client
            .get(format!("{management}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(other.status(), 404, "{path}");
    }
    app.stop().await;
    db.drop_database().await;
}

/// An instance that could only read would pass its health checks while every login, which
/// opens a session, failed: it must not come up at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_a_database_it_cannot_write_refuses_to_start_and_says_why() {
    let db = TestDb::create(Backend::Sqlite).await.unwrap();
    let pool = db.pool(1).await;
    portcullis::outbound::sea_orm::migrate_up(&pool)
        .await
        .unwrap();
    pool.close().await.unwrap();
    // Opened read-only, as SQLite opens a file it may not write or one on a read-only mount.
    let read_only = db.url().replace("mode=rwc", "mode=ro");
    let Err(err) = Application::build(&settings(&read_only, json!({}))).await else {
        panic!("a server started on a read-only database");
    };
    let message = format!("{err:#}");
    assert!(
        message.contains("cannot write to the SQLite database")
            && message.contains("readonly database")
            && message.contains("test.db"),
        "{message}"
    );
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_command_says_whether_a_server_is_alive_and_ready() {
    let db = TestDb::create(Backend::Sqlite).await.unwrap();
    let url = db.url().to_owned();
    let mut app = TestApp::spawn(settings(&url, json!({}))).await;
    let base = app.address.clone();
    let result = tokio::task::spawn_blocking(move || {
        for args in [
            vec!["health", "--url", &base],
            vec!["health", "--ready", "--url", &base],
        ] {
            let out = run_cli(&url, &[], &args, "");
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let closed = format!("http://127.0.0.1:{}", free_port());
        let out = run_cli(&url, &[], &["health", "--url", &closed], "");
        assert!(!out.status.success());
        let reason = String::from_utf8_lossy(&out.stderr);
        assert_eq!(reason.trim().lines().count(), 1, "{reason}");
        assert!(reason.contains(&closed), "{reason}");
        let tls = run_cli(&url, &[], &["health", "--url", "https://example.com"], "");
        assert!(!tls.status.success());
    })
    .await;
    app.stop().await;
    db.drop_database().await;
    result.unwrap();
}

#[test]
fn the_version_names_the_release_and_the_commit() {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let line = String::from_utf8_lossy(&out.stdout);
    let expected = format!("portcullis {} (", env!("CARGO_PKG_VERSION"));
    assert!(line.starts_with(&expected), "{line}");
    let commit = line
        .trim()
        .trim_start_matches(&expected)
        .trim_end_matches(')');
    assert!(!commit.is_empty(), "{line}");
}
