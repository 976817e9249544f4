//! The `portcullis` binary: parse the command line, load settings, start logging, dispatch.

use std::process::ExitCode;

use clap::Parser as _;
use portcullis::config::Settings;
use portcullis::inbound::cli::{self, Cli, Command};

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
    let log = portcullis::telemetry::init(settings.log_format, &settings.log_level);
    let outcome = cli::run(cli.command.unwrap_or(Command::Serve), &settings).await;
    // What is still queued is written before anything below, and before the process ends.
    drop(log);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("portcullis: {err:#}");
            if err.is::<cli::Refused>() {
                ExitCode::from(cli::Refused::EXIT_CODE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
