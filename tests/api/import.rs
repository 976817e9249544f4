//! `portcullis import pyauth` against a real pyauth schema on PostgreSQL, built from pyauth's
//! own migration SQL and holding hashes made by passlib (tests/fixtures/pyauth/README.md), into
//! a SQLite and a PostgreSQL target; and pyauth's tokens during the cutover, which name only the
//! users the import made.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use serde_json::{Value, json};

use crate::helpers::{
    Backend, PASSWORD, SECRET, TestApp, TestDb, assert_unauthorized, run_cli, settings,
};

const SCHEMA: &str = include_str!("../fixtures/pyauth/schema.sql");
const USERS: &str = include_str!("../fixtures/pyauth/users.sql");

/// A pyauth database as its migration and sign-ups leave it.
async fn pyauth_source() -> Option<(TestDb, DatabaseConnection)> {
    let db = TestDb::create(Backend::Postgres).await?;
    let conn = Database::connect(db.url()).await.expect("source");
    conn.execute_unprepared(SCHEMA)
        .await
        .expect("pyauth schema");
    conn.execute_unprepared(USERS).await.expect("pyauth users");
    Some((db, conn))
}

/// A pyauth database and a fresh target, with their URLs as the CLI takes them.
struct Cutover {
    source_db: TestDb,
    source: DatabaseConnection,
    target_db: TestDb,
    /// The source URL in the form pyauth's `.env` has it.
    from: String,
    target: String,
}

impl Cutover {
    async fn new(target_backend: Backend) -> Option<Self> {
        let (source_db, source) = pyauth_source().await?;
        let target_db = TestDb::create(target_backend).await?;
        Some(Self {
            from: psycopg2(source_db.url()),
            target: target_db.url().to_owned(),
            source_db,
            source,
            target_db,
        })
    }
}

/// The source URL in the form pyauth's `.env` has it.
fn psycopg2(url: &str) -> String {
    url.replacen("postgres://", "postgresql+psycopg2://", 1)
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn import(target: &str, from: &str, flags: &[&str]) -> Run {
    let mut args = vec!["import", "pyauth", "--from", from];
    args.extend(flags);
    let out = run_cli(target, &[], &args, "");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn count_users(target: &str) -> i64 {
    let conn = Database::connect(target).await.unwrap();
    let row = conn
        .query_one_raw(sea_orm::Statement::from_string(
            conn.get_database_backend(),
            "SELECT COUNT(*) AS n FROM users",
        ))
        .await
        .unwrap()
        .unwrap();
    conn.close().await.ok();
    row.try_get::<i64>("", "n").unwrap()
}

pub async fn stored_hash(target: &str, id: i64) -> String {
    let conn = Database::connect(target).await.unwrap();
    let row = conn
        .query_one_raw(sea_orm::Statement::from_string(
            conn.get_database_backend(),
            format!("SELECT password_hash FROM users WHERE id = {id}"),
        ))
        .await
        .unwrap()
        .unwrap();
    conn.close().await.ok();
    row.try_get::<String>("", "password_hash").unwrap()
}

async fn login_status(app: &TestApp, email: &str, password: &str) -> u16 {
    app.login(email, password).await.status().as_u16()
}

async fn import_into(target_backend: Backend) {
    let Some(Cutover {
        source_db,
        source,
        target_db,
        from,
        target,
    }) = Cutover::new(target_backend).await
    else {
        return;
    };

    // The default refuses the case-variant pair, lists everything, and writes nothing.
    let refused = import(&target, &from, &[]);
    assert!(!refused.ok, "{}", refused.stdout);
    for line in [
        "conflict: source id 1 (ann@example.com): one address here for source ids 1, 2",
        "conflict: source id 2 (Ann@Example.com)",
        "skipped: source id 7 (argon@example.com): a password hash that is not bcrypt",
        "skipped: source id 8 (not-an-email): an email Portcullis refuses",
        "nothing imported",
    ] {
        assert!(
            refused.stdout.contains(line),
            "{line:?} not in\n{}",
            refused.stdout
        );
    }
    assert_eq!(count_users(&target).await, 0);

    // A dry run says what would happen, and writes nothing.
    let dry = import(
        &target,
        &from,
        &["--on-conflict", "keep-oldest", "--dry-run"],
    );
    assert!(dry.ok, "{}{}", dry.stdout, dry.stderr);
    assert!(
        dry.stdout.contains(
            "5 would be imported, 0 would be updated, 0 unchanged, 1 conflicts, 2 skipped"
        ),
        "{}",
        dry.stdout
    );
    assert_eq!(count_users(&target).await, 0);

    let run = import(&target, &from, &["--on-conflict", "keep-oldest"]);
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains("5 imported, 0 updated, 0 unchanged, 1 conflicts, 2 skipped"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("kept 1"), "{}", run.stdout);
    let trail = run_cli(
        &target,
        &[],
        &["audit", "--kind", "users.imported", "--json"],
        "",
    );
    let events: Value = serde_json::from_slice(&trail.stdout).unwrap();
    assert_eq!(
        events.as_array().unwrap().len(),
        1,
        "one event, written with the users"
    );
    assert_eq!(events[0]["detail"]["imported"], "5");
    assert_eq!(events[0]["detail"]["conflicts"], "1");

    // The users log in with their pyauth passwords, keep their ids, roles and flags; the first
    // login rehashes cost 12 to the configured cost (4 in tests).
    let app = TestApp::spawn(settings(&target, json!({}))).await;
    assert!(stored_hash(&target, 1).await.starts_with("$2b$12$"));
    let ann = app.login("ann@example.com", "ann password 1").await;
    assert_eq!(ann.status(), 200);
    let token = ann.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let me: Value = app.get_auth("/auth/me", &token).await.json().await.unwrap();
    assert_eq!(
        (me["id"].as_i64(), me["full_name"].as_str()),
        (Some(1), Some("Ann Example"))
    );
    assert_eq!(
        me["created_at"].as_str().unwrap()[..19],
        *"2025-01-02T03:04:05"
    );
    assert!(stored_hash(&target, 1).await.starts_with("$2b$04$"));
    for (email, password) in [
        ("admin@example.com", "admin password 1"),
        ("twoa@example.com", "two a password"),
        ("twoy@example.com", "two y password"),
    ] {
        assert_eq!(login_status(&app, email, password).await, 200, "{email}");
    }
    assert_eq!(
        login_status(&app, "Ann@Example.com", "ann password 2").await,
        401
    );
    let inactive = app.login("inactive@example.com", "inactive password").await;
    assert_eq!(inactive.status(), 401);
    assert_eq!(
        inactive.json::<Value>().await.unwrap()["detail"],
        "Inactive user account"
    );
    let admin = app
        .token_for_existing_with("admin@example.com", "admin password 1")
        .await;
    assert_eq!(app.get_auth("/protected/admin", &admin).await.status(), 200);

    // A second run with nothing changed writes nothing, rehashed passwords included.
    let again = import(&target, &from, &["--on-conflict", "keep-oldest"]);
    assert!(again.ok);
    assert!(
        again.stdout.contains("0 imported, 0 updated, 5 unchanged"),
        "{}",
        again.stdout
    );
    assert!(again.stdout.contains("nothing to do"), "{}", again.stdout);
    assert!(stored_hash(&target, 1).await.starts_with("$2b$04$"));

    // The sequence moved past every source id (7 and 8 were skipped, but a later run may bring
    // them): a registration here gets a fresh one.
    let registered = app.register("local@example.com", "local password 1").await;
    let local_id = registered.json::<Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    assert!(local_id > 8, "{local_id}");

    // During the cutover pyauth goes on: a changed row is updated (a deactivation ends the
    // sessions here), a new one imported, and one clashing with a local user is reported.
    source
        .execute_unprepared(
            "UPDATE users SET is_active = false WHERE id = 5; \
             INSERT INTO users (id, email, hashed_password, full_name, role, is_active) \
             SELECT 20, 'new@example.com', hashed_password, NULL, 'USER', true FROM users WHERE id = 1; \
             INSERT INTO users (id, email, hashed_password, full_name, role, is_active) \
             SELECT 21, 'local@example.com', hashed_password, NULL, 'USER', true FROM users WHERE id = 1",
        )
        .await
        .unwrap();
    let twoa = app
        .token_for_existing_with("twoa@example.com", "two a password")
        .await;
    let third = import(&target, &from, &["--on-conflict", "keep-oldest"]);
    assert!(third.ok, "{}{}", third.stdout, third.stderr);
    assert!(
        third
            .stdout
            .contains("1 imported, 1 updated, 4 unchanged, 2 conflicts"),
        "{}",
        third.stdout
    );
    assert!(
        third.stdout.contains(&format!(
            "source id 21 (local@example.com): its address belongs to user {local_id} here"
        )),
        "{}",
        third.stdout
    );
    assert_eq!(app.get_auth("/protected/user", &twoa).await.status(), 401);
    assert_eq!(
        login_status(&app, "new@example.com", "ann password 1").await,
        200
    );

    // The source was only read.
    let row = source
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT COUNT(*) AS n FROM users",
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.try_get::<i64>("", "n").unwrap(), 10);

    let mut app = app;
    app.stop().await;
    source.close().await.ok();
    source_db.drop_database().await;
    target_db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyauth_users_come_over_with_their_passwords_into_sqlite() {
    import_into(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyauth_users_come_over_with_their_passwords_into_postgres() {
    import_into(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_source_gives_one_line_and_writes_nothing() {
    let Some(empty) = TestDb::create(Backend::Postgres).await else {
        return;
    };
    let target = TestDb::create(Backend::Sqlite).await.unwrap();
    let conn = Database::connect(empty.url()).await.unwrap();
    conn.execute_unprepared("CREATE TABLE users (id serial primary key, email text)")
        .await
        .unwrap();
    let (base, _) = empty.url().rsplit_once('/').unwrap();
    let unreachable = "postgres://nobody:secret@127.0.0.1:1/pyauth".to_owned();
    for (from, says) in [
        (format!("{base}/no_such_database_here"), "cannot connect to"),
        (unreachable, "cannot connect to"),
        (empty.url().to_owned(), "is not a pyauth database"),
        ("mysql://x/y".to_owned(), "must be a PostgreSQL URL"),
    ] {
        let run = import(target.url(), &from, &[]);
        assert!(!run.ok, "{from}");
        let lines: Vec<&str> = run
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(lines.len(), 1, "{from}: {:?}", run.stderr);
        assert!(lines[0].contains(says), "{from}: {}", lines[0]);
        assert!(!lines[0].contains("secret"), "a password in {}", lines[0]);
    }
    assert_eq!(count_users(target.url()).await, 0);
    conn.close().await.ok();
    empty.drop_database().await;
}

/// A token exactly as pyauth's `create_access_token` makes it: python-jose, HS256,
/// `{"sub": str(user.id), "role": user.role.value, "exp": ...}`.
fn pyauth_token(user_id: i64, role: &str, exp: i64) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": user_id.to_string(), "role": role, "exp": exp}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn in_fifteen_minutes() -> i64 {
    chrono::Utc::now().timestamp() + 900
}

async fn status_of(app: &TestApp, path: &str, token: &str) -> u16 {
    app.get_auth(path, token).await.status().as_u16()
}

/// pyauth's tokens during the cutover: they name the users the import made from their rows,
/// and nobody else, whatever the ids. Both ways ids collide are played: a user who registered
/// here before the import holds an id pyauth also gave someone (the import skips that row), and
/// pyauth goes on registering after the import, handing out ids this side hands out too.
async fn pyauth_tokens_name_only_imported_users(target_backend: Backend) {
    let Some(Cutover {
        source_db,
        source,
        target_db,
        from,
        target,
    }) = Cutover::new(target_backend).await
    else {
        return;
    };
    let until = (chrono::Utc::now() + chrono::TimeDelta::hours(1)).to_rfc3339();
    let mut app = TestApp::spawn(settings(
        &target,
        json!({"accept_pyauth_tokens_until": until}),
    ))
    .await;

    // Someone registers here first and is made an admin: id 1, which pyauth gave Ann.
    let first = app.register("first@example.com", PASSWORD).await;
    let first_id = first.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    assert_eq!(first_id, 1);
    let promoted = run_cli(&target, &[], &["user", "promote", "first@example.com"], "");
    assert!(promoted.status.success(), "{promoted:?}");
    let run = import(&target, &from, &["--on-conflict", "keep-oldest"]);
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains(
            "source id 1 (ann@example.com): its id belongs to a user who registered here"
        ),
        "{}",
        run.stdout
    );

    // Ann's pyauth token opens nothing: not the admin who holds id 1 here.
    let ann = pyauth_token(1, "user", in_fifteen_minutes());
    assert_unauthorized(app.get_auth("/auth/me", &ann).await, "").await;
    assert_eq!(status_of(&app, "/admin/users", &ann).await, 401);
    // The admin imported from row 3 is who row 3's token names, with this side's state.
    let admin = pyauth_token(3, "user", in_fifteen_minutes());
    let me: Value = app.get_auth("/auth/me", &admin).await.json().await.unwrap();
    assert_eq!(
        (me["id"].as_i64(), me["email"].as_str()),
        (Some(3), Some("admin@example.com"))
    );
    assert_eq!(status_of(&app, "/admin/users", &admin).await, 200);

    // pyauth keeps registering during the cutover; so does this side, from the moved sequence:
    // both hand out the same next id.
    let local = app.register("local@example.com", PASSWORD).await;
    let local_id = local.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    source
        .execute_unprepared(&format!(
            "INSERT INTO users (id, email, hashed_password, full_name, role, is_active) \
             SELECT {local_id}, 'later@example.com', hashed_password, NULL, 'ADMIN', true \
             FROM users WHERE id = 3"
        ))
        .await
        .unwrap();
    let later = pyauth_token(local_id, "admin", in_fifteen_minutes());
    assert_unauthorized(app.get_auth("/auth/me", &later).await, "").await;
    // A later run reports the clash and still maps nothing to the local user.
    let again = import(&target, &from, &["--on-conflict", "keep-oldest"]);
    assert!(again.ok, "{}{}", again.stdout, again.stderr);
    assert!(
        again.stdout.contains(&format!(
            "source id {local_id} (later@example.com): its id belongs to a user who registered here"
        )),
        "{}",
        again.stdout
    );
    assert_unauthorized(app.get_auth("/auth/me", &later).await, "").await;
    assert_eq!(status_of(&app, "/protected/user", &later).await, 401);

    app.stop().await;
    source.close().await.ok();
    source_db.drop_database().await;
    target_db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyauth_tokens_name_only_imported_users_on_sqlite() {
    pyauth_tokens_name_only_imported_users(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyauth_tokens_name_only_imported_users_on_postgres() {
    pyauth_tokens_name_only_imported_users(Backend::Postgres).await;
}

/// What a pyauth token of an imported user does: it works until the deadline, on the user's
/// current state, and belongs to no session.
async fn pyauth_tokens_of_imported_users_work_until_the_deadline(target_backend: Backend) {
    let Some(Cutover {
        source_db,
        source,
        target_db,
        from,
        target,
    }) = Cutover::new(target_backend).await
    else {
        return;
    };
    let run = import(&target, &from, &["--on-conflict", "keep-oldest"]);
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    let until = (chrono::Utc::now() + chrono::TimeDelta::hours(1)).to_rfc3339();
    let mut app = TestApp::spawn(settings(
        &target,
        json!({"accept_pyauth_tokens_until": until}),
    ))
    .await;
    let own = app
        .token_for_existing_with("twoy@example.com", "two y password")
        .await;
    let exp = in_fifteen_minutes();
    let token = pyauth_token(6, "user", exp);
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header, json!({"typ": "JWT", "alg": "HS256"}));
    assert_eq!(status_of(&app, "/protected/user", &token).await, 200);
    let sessions: Value = app
        .get_auth("/auth/sessions", &token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(sessions.as_array().unwrap().len(), 1);
    assert_eq!(sessions[0]["current"], false);
    // Logout answers 204 and ends nothing: the token carries no session.
    assert_eq!(app.logout(&token).await.status(), 204);
    assert_eq!(status_of(&app, "/protected/user", &token).await, 200);
    assert_eq!(status_of(&app, "/protected/user", &own).await, 200);
    // The role comes from the database, not the token; a deactivation applies at once.
    let claims_admin = pyauth_token(6, "admin", exp);
    assert_eq!(
        status_of(&app, "/protected/admin", &claims_admin).await,
        403
    );
    let deactivated = run_cli(
        &target,
        &[],
        &["user", "deactivate", "twoy@example.com"],
        "",
    );
    assert!(deactivated.status.success(), "{deactivated:?}");
    assert_unauthorized(app.get_auth("/auth/me", &token).await, "Inactive user").await;
    // Expired, forged, or for nobody.
    for refused in [
        pyauth_token(5, "user", chrono::Utc::now().timestamp() - 3600),
        pyauth_token(999_999, "user", exp),
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": "5", "role": "user", "exp": exp}),
            &EncodingKey::from_secret(b"not the secret key, not at all"),
        )
        .unwrap(),
    ] {
        assert_eq!(status_of(&app, "/auth/me", &refused).await, 401);
    }
    assert_eq!(
        status_of(&app, "/auth/me", &pyauth_token(5, "user", exp)).await,
        200
    );
    app.stop().await;

    // Without the setting, or once the deadline passed, the same token is refused.
    let token = pyauth_token(5, "user", exp);
    let mut never = TestApp::spawn(settings(&target, json!({}))).await;
    assert_unauthorized(never.get_auth("/auth/me", &token).await, "").await;
    never.stop().await;
    let passed = (chrono::Utc::now() - chrono::TimeDelta::seconds(1)).to_rfc3339();
    let mut late = TestApp::spawn(settings(
        &target,
        json!({"accept_pyauth_tokens_until": passed}),
    ))
    .await;
    assert_unauthorized(late.get_auth("/auth/me", &token).await, "").await;
    late.stop().await;

    source.close().await.ok();
    source_db.drop_database().await;
    target_db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyauth_tokens_of_imported_users_work_until_the_deadline_on_sqlite() {
    pyauth_tokens_of_imported_users_work_until_the_deadline(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyauth_tokens_of_imported_users_work_until_the_deadline_on_postgres() {
    pyauth_tokens_of_imported_users_work_until_the_deadline(Backend::Postgres).await;
}
