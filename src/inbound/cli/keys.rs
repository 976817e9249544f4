//! `portcullis keys`: list, rotate and retire the signing keys.

use super::args::KeysCommand;
use super::{migrated_core, report};
use crate::config::Settings;
use crate::domain::service::{Retired, Rotated};

pub(super) async fn run(command: KeysCommand, settings: &Settings) -> anyhow::Result<()> {
    let core = migrated_core(settings).await?;
    let keys = &core.keys;
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
