//! The command line: `serve` (the default), `migrate`, user administration, and a mail check.

use clap::{Parser, Subcommand};

use crate::config::Profile;

/// Portcullis, an email/password authentication service.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about)]
pub struct Cli {
    /// Settings profile: development, test or production.
    #[arg(
        long,
        global = true,
        env = "PORTCULLIS_PROFILE",
        default_value = "development"
    )]
    pub profile: Profile,

    /// Folder holding default.toml and the profile files.
    #[arg(
        long,
        global = true,
        env = "PORTCULLIS_CONFIG_DIR",
        default_value = "config"
    )]
    pub config_dir: std::path::PathBuf,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply pending migrations, then serve HTTP (the default).
    Serve,
    /// Apply pending migrations and exit.
    Migrate,
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
    /// Check the mail transport.
    #[command(subcommand)]
    Mail(MailCommand),
}

#[derive(Debug, Subcommand)]
pub enum MailCommand {
    /// Send a test message through the configured transport now, and print the server's
    /// answer.
    Test { address: String },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user; the password is read from standard input.
    Create {
        email: String,
        /// Give the user the admin role.
        #[arg(long)]
        admin: bool,
    },
    /// Give a user the admin role.
    Promote { email: String },
    /// Give an admin the user role back.
    Demote { email: String },
    /// Deactivate a user: their sessions end and they can no longer log in.
    Deactivate { email: String },
    /// Reactivate a user.
    Activate { email: String },
    /// Mark a user's address verified.
    Verify { email: String },
    /// Print a fresh password-reset link for a user (for when mail is down).
    ResetLink { email: String },
}
