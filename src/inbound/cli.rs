//! The command line, an inbound adapter like the HTTP API: each command opens the storage the
//! settings name, builds the core once, and drives its use cases.

mod args;
mod backup;
mod clients;
mod health;
mod import;
mod keys;
mod reference;
mod report;
mod users;

use std::sync::Arc;

use std::io::Write as _;

use anyhow::Context as _;

pub use args::{Cli, Command};
pub use reference::reference;

use crate::config::Settings;
use crate::domain::Email;
use crate::domain::service::Core;
use crate::startup::{self, Application, SchemaState, Storage};
use args::MailCommand;

/// Runs `command`.
///
/// # Errors
/// Whatever stops the command, with a message meant for the operator.
pub async fn run(command: Command, settings: &Settings) -> anyhow::Result<()> {
    match command {
        Command::Serve => {
            let app = Application::build(settings).await?;
            app.run_until(startup::shutdown_signal()).await?;
        }
        Command::Migrate => {
            let storage = Storage::open(settings).await?;
            let state = storage.migrate().await?;
            // Building the core makes the first signing key when an asymmetric algorithm is
            // configured.
            startup::build(settings, &storage).await?;
            match state {
                SchemaState::Current => println!("migrations applied"),
                // Not an error: the unit files run `migrate` before every start, and an older
                // release must still start during a rollout or a roll-back.
                SchemaState::Ahead(versions) => println!(
                    "nothing applied: a newer release has migrated the database ({}); this \
                     release runs on it, but only the newest release's `migrate` upgrades it",
                    versions.join(", ")
                ),
            }
        }
        Command::Openapi { redoc } => {
            let (document, page) = startup::openapi_documents(settings).await?;
            let text = if redoc {
                page
            } else {
                // Indented, so that docs/openapi.json reads well and diffs by line.
                serde_json::to_string_pretty(&serde_json::from_str::<serde_json::Value>(
                    &document,
                )?)?
            };
            let mut out = std::io::stdout().lock();
            match writeln!(out, "{text}") {
                // A reader that stopped early (`| head`) is not an error of ours.
                Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => return Err(err.into()),
                _ => {}
            }
        }
        Command::Health { ready, url } => health::check(ready, url.as_deref(), settings).await?,
        Command::Backup { to, force, json } => backup::run(&to, force, json, settings).await?,
        Command::Keys(command) => keys::run(command, settings).await?,
        Command::Clients(command) => clients::run(command, settings).await?,
        Command::Import(command) => import::run(command, settings).await?,
        Command::User(command) => users::administer(command, settings).await?,
        Command::Audit {
            user,
            kind,
            since,
            limit,
            json,
        } => users::audit(user, kind, since, limit, json, settings).await?,
        Command::Mail(MailCommand::Test { address }) => {
            let storage = Storage::open(settings).await?;
            let core = startup::build(settings, &storage).await?;
            let to = parse_email(&address)?;
            let answer = core.delivery.send_test_mail(&to).await?;
            println!("sent to {to}: {answer}");
        }
    }
    Ok(())
}

/// A command refused as invoked, before it changed anything: the binary exits with
/// [`Refused::EXIT_CODE`], as for a usage error, rather than 1 for a command that failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(String);

impl Refused {
    /// clap's code for a bad invocation.
    pub const EXIT_CODE: u8 = 2;
}

/// The core on the settings' storage, its schema brought up to date first.
async fn migrated_core(settings: &Settings) -> anyhow::Result<Arc<Core>> {
    let storage = Storage::open(settings).await?;
    storage.migrate().await?;
    startup::build(settings, &storage).await
}

fn parse_email(email: &str) -> anyhow::Result<Email> {
    Email::parse(email).with_context(|| format!("{email:?}"))
}
