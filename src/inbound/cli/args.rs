//! The command line: `serve` (the default), `migrate`, user administration, backups, and a mail
//! check.

use clap::{Parser, Subcommand};

use crate::config::Profile;

/// Portcullis, an email/password authentication service.
#[derive(Debug, Parser)]
#[command(
    name = "portcullis",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("PORTCULLIS_COMMIT"), ")"),
    about
)]
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
    /// Apply pending migrations and exit. On a database a newer release has migrated, apply
    /// nothing and say so (this release still serves on it).
    Migrate,
    /// Print the OpenAPI document (what `/openapi.json` serves), or with `--redoc` the
    /// self-contained ReDoc page that renders it; needs no database.
    Openapi {
        /// The ReDoc page (HTML) instead of the JSON document.
        #[arg(long)]
        redoc: bool,
    },
    /// Ask a running server whether it is alive (`/health`) or ready (`/ready`); exits 0 on a
    /// 200. For container health checks: the image has no curl.
    Health {
        /// Ask `/ready` (the database answers, not shutting down) instead of `/health`.
        #[arg(long)]
        ready: bool,
        /// The server's base URL (http only); by default this host's `PORT`.
        #[arg(long)]
        url: Option<String>,
    },
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
    /// Check the mail transport.
    #[command(subcommand)]
    Mail(MailCommand),
    /// Bring users over from another service, passwords included.
    #[command(subcommand)]
    Import(ImportCommand),
    /// Copy a SQLite database into FILE while the service runs: one consistent snapshot through
    /// SQLite's online backup API, checked with `PRAGMA integrity_check` and synced before it
    /// takes FILE's name, readable by its owner only.
    ///
    /// The backup holds the signing keys and TOTP secrets sealed with SECRET_KEY: keep the key,
    /// and keep it apart from the backups. On PostgreSQL use `pg_dump` and WAL archiving
    /// instead (docs/operations.md, "Backups and restores"); with memory:// there is nothing to
    /// back up. Both refuse with exit code 2, as does an existing FILE without --force; a
    /// backup that fails exits 1 and leaves no file behind.
    Backup {
        /// The backup file to write; its folder must exist.
        #[arg(long, value_name = "FILE")]
        to: std::path::PathBuf,
        /// Replace FILE if it exists (only once the new backup is complete and checked).
        #[arg(long)]
        force: bool,
        /// What was backed up as one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The asymmetric keys that sign access tokens (jwt_algorithm EdDSA, ES256 or RS256).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// The applications that sign people in with Portcullis (the OpenID provider's clients).
    #[command(subcommand)]
    Clients(ClientsCommand),
    /// Show the audit trail, newest first.
    Audit {
        /// Only events of the user with this email.
        #[arg(long)]
        user: Option<String>,
        /// Only events of this kind, such as login.failed.
        #[arg(long)]
        kind: Option<String>,
        /// Only events at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// At most this many events.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum MailCommand {
    /// Send a test message through the configured transport now, and print the server's
    /// answer.
    Test { address: String },
}

#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// Import pyauth's users (ids, bcrypt hashes, roles, active flags, names, creation times)
    /// in one transaction. Repeatable: a re-run adds new users and updates imported ones.
    Pyauth {
        /// pyauth's DATABASE_URL: postgresql://, postgres:// or postgresql+psycopg2://.
        #[arg(long = "from")]
        from: String,
        /// Source users that are one address here (pyauth compared case-sensitively).
        #[arg(long, value_enum, default_value_t = OnConflictArg::Fail)]
        on_conflict: OnConflictArg,
        /// Print what a run would do, write nothing, and exit as the run would.
        #[arg(long)]
        dry_run: bool,
    },
}

/// `--on-conflict`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnConflictArg {
    /// Import nothing, and list every conflict.
    Fail,
    /// Keep the user with the smallest id.
    KeepOldest,
    /// Keep the user created last.
    KeepNewest,
}

impl From<OnConflictArg> for crate::domain::import::OnConflict {
    fn from(arg: OnConflictArg) -> Self {
        match arg {
            OnConflictArg::Fail => Self::Fail,
            OnConflictArg::KeepOldest => Self::KeepOldest,
            OnConflictArg::KeepNewest => Self::KeepNewest,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ClientsCommand {
    /// Register a client. A confidential one's secret is printed once, and never again.
    Create {
        /// The name people see on the consent page.
        #[arg(long)]
        name: String,
        /// Where the client receives codes: https, http on localhost only. Repeatable.
        #[arg(long = "redirect-uri", required = true)]
        redirect_uris: Vec<String>,
        /// Where the client may send the browser after a sign-out. Repeatable.
        #[arg(long = "post-logout-redirect-uri")]
        post_logout_redirect_uris: Vec<String>,
        /// A browser or native application: no secret; PKCE alone proves it.
        #[arg(long)]
        public: bool,
        /// One of your own applications: people are not asked for consent.
        #[arg(long)]
        first_party: bool,
        /// The client, and its secret, as one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Every client.
    List {
        /// A JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete a client: every grant and token issued to it ends.
    Delete {
        /// Client ids are base64url and may begin with `-`.
        #[arg(allow_hyphen_values = true)]
        client_id: String,
    },
    /// Give a confidential client a new secret; the old one stops working at once.
    RotateSecret {
        #[arg(allow_hyphen_values = true)]
        client_id: String,
        /// `{"client_id", "client_secret"}` instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Every key: kid, algorithm, state, when it was made, when it signs, when it retires.
    List {
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Start a rotation: a new key is published now and signs after the publication delay
    /// (jwks_max_age + the access-token lifetime + signing_key_refresh_seconds).
    Rotate {
        /// Sign with the new key at once. Resource servers holding a cached key set will
        /// refetch it when they meet its kid; those that do not will refuse its tokens until
        /// their cache expires.
        #[arg(long)]
        now: bool,
    },
    /// Emergency revocation. Once it returns, no instance signs with the key; on PostgreSQL
    /// every instance refuses its tokens and stops publishing it within a second (on SQLite
    /// within signing_key_refresh_seconds). Retiring the signing key puts another in its place
    /// at once.
    Retire {
        /// Key ids are base64url and may begin with `-`: taken as the id, not an option.
        #[arg(allow_hyphen_values = true)]
        kid: String,
    },
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
    /// Remove every second factor of a user (TOTP, recovery codes, passkeys), for a user who
    /// lost them: their next login asks for the password alone.
    MfaReset { email: String },
    /// List users, newest first.
    List {
        /// Only users whose email or full name contains this text (any case).
        #[arg(long)]
        q: Option<String>,
        /// Only users of this role: user or admin.
        #[arg(long)]
        role: Option<String>,
        /// At most this many users.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete a user, their sessions and tokens; their audit events stay.
    Delete { email: String },
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[test]
    fn a_kid_that_begins_with_a_hyphen_is_an_id_not_an_option() {
        let cli = Cli::try_parse_from(["portcullis", "keys", "retire", "-P34tfY59qOm"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Keys(KeysCommand::Retire { kid })) if kid == "-P34tfY59qOm"
        ));
    }

    #[test]
    fn the_import_takes_pyauths_url_and_a_conflict_mode() {
        let cli = Cli::try_parse_from([
            "portcullis",
            "import",
            "pyauth",
            "--from",
            "postgresql+psycopg2://u@h/db",
            "--on-conflict",
            "keep-newest",
            "--dry-run",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Import(ImportCommand::Pyauth {
                on_conflict: OnConflictArg::KeepNewest,
                dry_run: true,
                ..
            }))
        ));
        assert!(
            Cli::try_parse_from([
                "portcullis",
                "import",
                "pyauth",
                "--from",
                "x",
                "--on-conflict",
                "merge"
            ])
            .is_err()
        );
    }
}
