//! The migration policy, enforced: during a rolling upgrade the previous release keeps running on
//! the schema the new release migrated, so migrations after a release only add, and the files a
//! release shipped never change. tests/fixtures/released-migrations.sha256 records what the last
//! release shipped; the schema is read from the database itself on SQLite and PostgreSQL.

use std::collections::{BTreeMap, BTreeSet};

use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use sha2::{Digest as _, Sha256};

use crate::helpers::{Backend, TestDb};

/// What a developer reads when the check fails.
const POLICY: &str = "Migrations must keep the previous release working: it runs on the \
    migrated schema while instances are replaced one by one. After a release, migrations only \
    add tables, columns that are nullable or have a default, and indexes that are not UNIQUE on \
    existing columns; a column or table the previous release uses is never dropped, renamed or \
    retyped, nor made NOT NULL (a rename is add + backfill + a drop in a later release), and a \
    shipped migration file never changes. The policy: docs/decisions/25-rolling-upgrades.md \
    (summary: docs/operations.md, \"Upgrades\").";

/// The last release's name and its migration files (SHA-256, path), in order.
fn released() -> (String, Vec<(String, String)>) {
    let text = include_str!("../fixtures/released-migrations.sha256");
    let mut release = None;
    let mut files = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix("release ") {
            release = Some(name.to_owned());
        } else {
            let (sum, path) = line.split_once("  ").expect("`sha256sum` lines");
            files.push((sum.to_owned(), path.to_owned()));
        }
    }
    (release.expect("a `release` line"), files)
}

#[test]
fn shipped_migration_files_never_change() {
    let (release, files) = released();
    let names: Vec<String> = Migrator::migrations()
        .iter()
        .map(|m| m.name().to_owned())
        .collect();
    for (i, (sum, path)) in files.iter().enumerate() {
        let stem = std::path::Path::new(path)
            .file_stem()
            .unwrap()
            .to_str()
            .unwrap();
        assert_eq!(
            names.get(i).map(String::as_str),
            Some(stem),
            "migration {} of release {release} is {path}, in that place of Migrator::migrations(). {POLICY}",
            i + 1
        );
        // The bytes as checked out: .gitattributes keeps these files LF on every platform.
        let bytes = std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
            .unwrap_or_else(|err| panic!("{path}, shipped in {release}: {err}. {POLICY}"));
        assert_eq!(
            &format!("{:x}", Sha256::digest(&bytes)),
            sum,
            "{path} changed after release {release} shipped it; write a new migration instead. {POLICY}"
        );
    }
}

/// A column as the database describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Column {
    ty: String,
    not_null: bool,
    default: Option<String>,
}

/// An index's table, its key (columns or expressions, in order), and whether it is UNIQUE.
type Index = (String, Vec<String>, bool);

#[derive(Debug, Default)]
struct Schema {
    tables: BTreeMap<String, BTreeMap<String, Column>>,
    indexes: BTreeSet<Index>,
}

const SQLITE_TABLES: &str = "FROM sqlite_master m, pragma_table_info(m.name) p WHERE m.type = 'table' \
    AND m.name NOT LIKE 'sqlite%' AND m.name <> 'seaql_migrations'";

/// Every table's columns, and every index (the ones behind UNIQUE and PRIMARY KEY constraints
/// too), but for the migration table's.
async fn read_schema(conn: &DatabaseConnection) -> Schema {
    let (columns, indexes) = match conn.get_database_backend() {
        DbBackend::Sqlite => (
            format!(
                "SELECT m.name AS tbl, p.name AS col, p.type AS ty, p.\"notnull\" AS not_null, \
                 p.dflt_value AS dflt {SQLITE_TABLES}"
            ),
            "SELECT m.name AS tbl, il.\"unique\" AS uniq, il.name AS idx, ii.seqno AS seqno, \
             COALESCE(ii.name, '<expression>') AS col \
             FROM sqlite_master m, pragma_index_list(m.name) il, pragma_index_info(il.name) ii \
             WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite%' AND m.name <> 'seaql_migrations' \
             ORDER BY tbl, idx, seqno"
                .to_owned(),
        ),
        _ => (
            "SELECT table_name::text AS tbl, column_name::text AS col, \
             (CASE WHEN data_type = 'USER-DEFINED' THEN udt_name::text ELSE data_type::text END) \
             || COALESCE('(' || character_maximum_length || ')', '') AS ty, \
             (CASE WHEN is_nullable = 'NO' THEN 1 ELSE 0 END)::bigint AS not_null, \
             column_default::text AS dflt \
             FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name <> 'seaql_migrations'"
                .to_owned(),
            "SELECT t.relname::text AS tbl, (CASE WHEN ix.indisunique THEN 1 ELSE 0 END)::bigint \
             AS uniq, i.relname::text AS idx, k::bigint AS seqno, \
             pg_get_indexdef(ix.indexrelid, k, true) AS col \
             FROM pg_index ix JOIN pg_class t ON t.oid = ix.indrelid \
             JOIN pg_class i ON i.oid = ix.indexrelid \
             JOIN pg_namespace n ON n.oid = t.relnamespace, \
             generate_series(1, ix.indnkeyatts::int) k \
             WHERE n.nspname = 'public' AND t.relname <> 'seaql_migrations' \
             ORDER BY tbl, idx, seqno"
                .to_owned(),
        ),
    };
    let query = |sql: String| async move {
        conn.query_all_raw(Statement::from_string(conn.get_database_backend(), sql))
            .await
            .expect("read the schema")
    };
    let mut schema = Schema::default();
    for row in query(columns).await {
        let text = |name: &str| row.try_get::<String>("", name).unwrap();
        schema.tables.entry(text("tbl")).or_default().insert(
            text("col"),
            Column {
                ty: text("ty").to_lowercase(),
                not_null: row.try_get::<i64>("", "not_null").unwrap() != 0,
                default: row.try_get::<Option<String>>("", "dflt").unwrap(),
            },
        );
    }
    let mut keys: BTreeMap<(String, String), (bool, Vec<String>)> = BTreeMap::new();
    for row in query(indexes).await {
        let text = |name: &str| row.try_get::<String>("", name).unwrap();
        keys.entry((text("tbl"), text("idx")))
            .or_insert_with(|| (row.try_get::<i64>("", "uniq").unwrap() != 0, Vec::new()))
            .1
            .push(text("col"));
    }
    // Indexes are compared by what they cover, not by name: SQLite numbers the ones behind
    // constraints by position.
    schema.indexes = keys
        .into_iter()
        .map(|((table, _), (unique, key))| (table, key, unique))
        .collect();
    schema
}

/// What the migrations after a release did to `before` (that release's schema) that the release
/// cannot live with, one line each.
fn breaches(before: &Schema, after: &Schema) -> Vec<String> {
    let mut found = Vec::new();
    for (table, columns) in &before.tables {
        let Some(now) = after.tables.get(table) else {
            found.push(format!("table {table} was dropped or renamed"));
            continue;
        };
        for (name, was) in columns {
            match now.get(name) {
                None => found.push(format!("column {table}.{name} was dropped or renamed")),
                Some(is) if is.ty != was.ty => found.push(format!(
                    "column {table}.{name} changed type from {} to {}",
                    was.ty, is.ty
                )),
                Some(is) if is.not_null && !was.not_null => {
                    found.push(format!("column {table}.{name} became NOT NULL"));
                }
                Some(_) => {}
            }
        }
        let added: Vec<&String> = now.keys().filter(|c| !columns.contains_key(*c)).collect();
        for name in &added {
            let column = &now[*name];
            if column.not_null && column.default.is_none() {
                found.push(format!(
                    "column {table}.{name} was added NOT NULL without a default: the previous \
                     release's inserts would fail"
                ));
            }
        }
        for (_, key, _) in after.indexes.iter().filter(|(t, key, unique)| {
            t == table
                && *unique
                && !before.indexes.contains(&((*t).clone(), key.clone(), true))
                && !key.iter().any(|part| {
                    part.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .any(|word| added.iter().any(|c| c.as_str() == word))
                })
        }) {
            found.push(format!(
                "a new UNIQUE index on {table}({}), which the previous release writes without \
                 knowing of it",
                key.join(", ")
            ));
        }
    }
    found
}

async fn the_released_schema_still_serves_its_release(backend: Backend) {
    let Some(db) = TestDb::create(backend).await else {
        return;
    };
    let conn = db.pool(2).await;
    let (release, files) = released();
    Migrator::up(&conn, Some(u32::try_from(files.len()).unwrap()))
        .await
        .unwrap();
    let before = read_schema(&conn).await;
    assert!(
        before.tables.contains_key("users") && before.indexes.iter().any(|(_, _, unique)| *unique),
        "the schema reader sees tables and unique indexes: {before:?}"
    );
    Migrator::up(&conn, None).await.unwrap();
    let after = read_schema(&conn).await;
    let found = breaches(&before, &after);
    assert!(
        found.is_empty(),
        "the migrations after release {release} break it on {backend:?}:\n- {}\n{POLICY}",
        found.join("\n- ")
    );
    conn.close().await.unwrap();
    db.drop_database().await;
}

#[tokio::test]
async fn the_released_schema_still_serves_its_release_on_sqlite() {
    the_released_schema_still_serves_its_release(Backend::Sqlite).await;
}

#[tokio::test]
async fn the_released_schema_still_serves_its_release_on_postgres() {
    the_released_schema_still_serves_its_release(Backend::Postgres).await;
}

#[test]
fn the_check_names_each_kind_of_breach() {
    let column = |ty: &str, not_null: bool, default: Option<&str>| Column {
        ty: ty.to_owned(),
        not_null,
        default: default.map(str::to_owned),
    };
    let mut before = Schema::default();
    before.tables.insert(
        "users".into(),
        BTreeMap::from([
            ("id".into(), column("integer", true, None)),
            ("email".into(), column("varchar(255)", true, None)),
            ("name".into(), column("text", false, None)),
            ("role".into(), column("text", false, None)),
        ]),
    );
    before.tables.insert("sessions".into(), BTreeMap::new());
    before
        .indexes
        .insert(("users".into(), vec!["id".into()], true));
    let mut after = Schema::default();
    after.tables.insert(
        "users".into(),
        BTreeMap::from([
            ("id".into(), column("integer", true, None)),
            ("email".into(), column("text", true, None)),
            ("name".into(), column("text", true, None)),
            ("nickname".into(), column("text", false, None)),
            ("tier".into(), column("text", true, Some("'free'"))),
            ("handle".into(), column("text", true, None)),
        ]),
    );
    after.indexes = before.indexes.clone();
    // Fine: unique over a new column; breach: unique over columns the release writes.
    after
        .indexes
        .insert(("users".into(), vec!["nickname".into()], true));
    after
        .indexes
        .insert(("users".into(), vec!["lower(email)".into()], true));
    assert_eq!(
        breaches(&before, &after),
        [
            "table sessions was dropped or renamed",
            "column users.email changed type from varchar(255) to text",
            "column users.name became NOT NULL",
            "column users.role was dropped or renamed",
            "column users.handle was added NOT NULL without a default: the previous release's \
             inserts would fail",
            "a new UNIQUE index on users(lower(email)), which the previous release writes \
             without knowing of it",
        ]
    );
    assert!(breaches(&before, &before).is_empty());
}
