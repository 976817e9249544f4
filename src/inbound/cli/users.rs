//! `portcullis user` and `portcullis audit`: the operator's administration.

use std::io::{BufRead as _, IsTerminal as _};

use anyhow::Context as _;

use super::args::UserCommand;
use super::{migrated_core, parse_email, report};
use crate::config::Settings;
use crate::domain::{AuditKind, AuditQuery, Password, Role, UserQuery};

pub(super) async fn administer(command: UserCommand, settings: &Settings) -> anyhow::Result<()> {
    let core = migrated_core(settings).await?;
    let user = match command {
        UserCommand::Create { email, admin } => {
            let email = parse_email(&email)?;
            let password = Password::parse(&read_password()?).context("password")?;
            let role = if admin { Role::Admin } else { Role::User };
            core.admin
                .create_user_as_operator(email, password, role)
                .await?
        }
        UserCommand::Promote { email } => {
            core.admin
                .set_role(&parse_email(&email)?, Role::Admin)
                .await?
        }
        UserCommand::Demote { email } => {
            core.admin
                .set_role(&parse_email(&email)?, Role::User)
                .await?
        }
        UserCommand::Deactivate { email } => {
            core.admin.set_active(&parse_email(&email)?, false).await?
        }
        UserCommand::Activate { email } => {
            core.admin.set_active(&parse_email(&email)?, true).await?
        }
        UserCommand::Verify { email } => {
            core.admin
                .set_email_verified(&parse_email(&email)?, true)
                .await?
        }
        UserCommand::List {
            q,
            role,
            limit,
            json,
        } => {
            let query = UserQuery {
                search: q.map(|q| q.to_lowercase()),
                role: role
                    .map(|r| r.parse::<Role>().context("--role must be user or admin"))
                    .transpose()?,
                limit: limit.clamp(1, 10_000),
                ..UserQuery::default()
            };
            let users = core.admin.list_accounts(&query).await?;
            print!("{}", report::users(&users, json));
            return Ok(());
        }
        UserCommand::Delete { email } => core.admin.delete_by_email(&parse_email(&email)?).await?,
        UserCommand::MfaReset { email } => {
            let removed = core
                .admin
                .reset_factors_by_email(&parse_email(&email)?)
                .await?;
            println!(
                "{email}: {}",
                if removed {
                    "second factors removed"
                } else {
                    "had no second factor"
                }
            );
            return Ok(());
        }
        UserCommand::ResetLink { email } => {
            let link = core
                .recovery
                .reset_link(&parse_email(&email)?)
                .await
                .with_context(|| format!("no active user has the address {email:?}"))?;
            println!("{link}");
            return Ok(());
        }
    };
    println!(
        "{} (id {}): role {}, {}, {}",
        user.email,
        user.id,
        user.role,
        if user.is_active { "active" } else { "inactive" },
        if user.email_verified {
            "verified"
        } else {
            "unverified"
        }
    );
    Ok(())
}

pub(super) async fn audit(
    user: Option<String>,
    kind: Option<String>,
    since: Option<String>,
    limit: u32,
    json: bool,
    settings: &Settings,
) -> anyhow::Result<()> {
    let core = migrated_core(settings).await?;
    let user_id = match user {
        Some(email) => Some(core.admin.find_user(&parse_email(&email)?).await?.id),
        None => None,
    };
    let query = AuditQuery {
        user_id,
        kind: kind
            .map(|k| AuditKind::parse(&k).with_context(|| format!("unknown kind {k:?}")))
            .transpose()?,
        since: since
            .map(|s| {
                chrono::DateTime::parse_from_rfc3339(&s)
                    .map(|t| t.with_timezone(&chrono::Utc))
                    .with_context(|| format!("--since {s:?} is not an RFC 3339 time"))
            })
            .transpose()?,
        limit: limit.clamp(1, 10_000),
        ..AuditQuery::default()
    };
    let events = core.admin.audit_events(&query).await?;
    print!("{}", report::audit(&events, json));
    Ok(())
}

/// Reads one line from standard input, so the password stays out of argv and shell history.
fn read_password() -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        eprint!("Password: ");
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}
