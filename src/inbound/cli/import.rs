//! `portcullis import pyauth`: pyauth's users into this database, with a progress line.

use std::io::IsTerminal as _;

use anyhow::Context as _;

use super::args::ImportCommand;
use super::report;
use crate::config::Settings;
use crate::domain::service;
use crate::outbound::sea_orm::PyauthDatabase;
use crate::startup::Storage;

pub(super) async fn run(command: ImportCommand, settings: &Settings) -> anyhow::Result<()> {
    let ImportCommand::Pyauth {
        from,
        on_conflict,
        dry_run,
    } = command;
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
