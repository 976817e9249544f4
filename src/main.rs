//! The `portcullis` binary: parse the command line, load settings, start logging, run.

use std::io::{BufRead as _, IsTerminal as _};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use portcullis::cli::report;
use portcullis::cli::{Cli, Command, ImportCommand, KeysCommand, MailCommand, UserCommand};
use portcullis::config::Settings;
use portcullis::domain::service::{self, Retired, Rotated};
use portcullis::domain::{AuditKind, AuditQuery, Email, Password, Role, UserQuery};
use portcullis::outbound::sea_orm::PyauthDatabase;
use portcullis::startup::{self, Application, Storage};

#[tokio::main]
async fn main() -> ExitCode {
    // .env fills in what the environment leaves unset; a missing file is fine.
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    let settings = match Settings::load(cli.profile, &cli.config_dir) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("portcullis: {err}");
            return ExitCode::FAILURE;
        }
    };
    portcullis::telemetry::init(settings.log_format, &settings.log_level);
    match run(cli.command.unwrap_or(Command::Serve), &settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("portcullis: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, settings: &Settings) -> anyhow::Result<()> {
    match command {
        Command::Serve => {
            let app = Application::build(settings).await?;
            app.run_until(startup::shutdown_signal()).await?;
            Ok(())
        }
        Command::Migrate => {
            let storage = Storage::open(settings).await?;
            storage.migrate().await?;
            // Makes the first signing key when an asymmetric algorithm is configured.
            startup::build(settings, &storage).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Keys(command) => manage_keys(command, settings).await,
        Command::Import(ImportCommand::Pyauth {
            from,
            on_conflict,
            dry_run,
        }) => {
            let storage = Storage::open(settings).await?;
            storage.migrate().await?;
            let target = storage
                .import_target(settings)
                .context("an import needs a database (DATABASE_URL postgres:// or sqlite:)")?;
            let source = PyauthDatabase::connect(&from).await?;
            let progress = Progress::new();
            let plan = service::import_users(
                &source,
                target.as_ref(),
                on_conflict.into(),
                dry_run,
                chrono::Utc::now(),
                &|done| progress.show(done),
            )
            .await?;
            progress.finish();
            print!("{}", report::import(&plan, dry_run));
            if plan.refused {
                anyhow::bail!("{} conflicts", plan.conflicts.len());
            }
            Ok(())
        }
        Command::User(command) => administer(command, settings).await,
        Command::Audit {
            user,
            kind,
            since,
            limit,
            json,
        } => {
            let storage = Storage::open(settings).await?;
            storage.migrate().await?;
            let core = startup::build(settings, &storage).await?;
            let user_id = match user {
                Some(email) => {
                    let email = Email::parse(&email).with_context(|| format!("{email:?}"))?;
                    let user = core.admin.find_user(&email).await?;
                    Some(user.id)
                }
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
        Command::Mail(MailCommand::Test { address }) => {
            let storage = Storage::open(settings).await?;
            let core = startup::build(settings, &storage).await?;
            let to = Email::parse(&address).with_context(|| format!("{address:?}"))?;
            let answer = core.delivery.send_test_mail(&to).await?;
            println!("sent to {to}: {answer}");
            Ok(())
        }
    }
}

/// How far an import's write has come: a bar on a terminal, a line every 10,000 users
/// otherwise.
struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    fn new() -> Self {
        Self(std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_message("users written");
            bar
        }))
    }

    fn show(&self, done: usize) {
        match &self.0 {
            Some(bar) => bar.set_position(done as u64),
            None if done.is_multiple_of(10_000) => eprintln!("{done} users written"),
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

async fn manage_keys(command: KeysCommand, settings: &Settings) -> anyhow::Result<()> {
    let storage = Storage::open(settings).await?;
    storage.migrate().await?;
    let keys = std::sync::Arc::clone(&startup::build(settings, &storage).await?.keys);
    match command {
        KeysCommand::List { json } => print!("{}", report::keys(&keys.list().await?, json)),
        KeysCommand::Rotate { now } => match keys.rotate(now).await? {
            Rotated::Scheduled(key) => println!(
                "published {} ({}); it signs from {}",
                key.kid, key.algorithm, key.activates_at
            ),
            Rotated::AlreadyScheduled(key) => println!(
                "a rotation is under way already: {} signs from {}",
                key.kid, key.activates_at
            ),
            Rotated::Immediately(key) => {
                eprintln!(
                    "warning: {} signs now, before resource servers' cached key sets know it; \
                     those that do not refetch the JWKS on an unknown kid refuse its tokens \
                     until their cache expires",
                    key.kid
                );
                println!("{} ({}) signs from now on", key.kid, key.algorithm);
            }
        },
        KeysCommand::Retire { kid } => match keys.retire(&kid).await? {
            Retired::Already => println!("{kid} was retired already"),
            Retired::Done { replacement } => {
                println!(
                    "retired {kid}: its tokens stop verifying on every instance within {} s",
                    settings.signing_key_refresh_seconds
                );
                if let Some(key) = replacement {
                    eprintln!(
                        "warning: {kid} was the signing key; {} signs in its place from now on",
                        key.kid
                    );
                }
            }
        },
    }
    Ok(())
}

async fn administer(command: UserCommand, settings: &Settings) -> anyhow::Result<()> {
    let storage = Storage::open(settings).await?;
    storage.migrate().await?;
    let core = startup::build(settings, &storage).await?;
    let parse = |email: &str| Email::parse(email).with_context(|| format!("{email:?}"));
    let user = match command {
        UserCommand::Create { email, admin } => {
            let email = parse(&email)?;
            let password = Password::parse(&read_password()?).context("password")?;
            let role = if admin { Role::Admin } else { Role::User };
            core.admin
                .create_user_as_operator(email, password, role)
                .await?
        }
        UserCommand::Promote { email } => core.admin.set_role(&parse(&email)?, Role::Admin).await?,
        UserCommand::Demote { email } => core.admin.set_role(&parse(&email)?, Role::User).await?,
        UserCommand::Deactivate { email } => core.admin.set_active(&parse(&email)?, false).await?,
        UserCommand::Activate { email } => core.admin.set_active(&parse(&email)?, true).await?,
        UserCommand::Verify { email } => {
            core.admin.set_email_verified(&parse(&email)?, true).await?
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
        UserCommand::Delete { email } => core.admin.delete_by_email(&parse(&email)?).await?,
        UserCommand::MfaReset { email } => {
            let removed = core.admin.reset_factors_by_email(&parse(&email)?).await?;
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
                .reset_link(&parse(&email)?)
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

/// Reads one line from standard input, so the password stays out of argv and shell history.
fn read_password() -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        eprint!("Password: ");
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}
