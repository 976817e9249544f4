//! The command-line reference page (`docs/cli.md`), written from the clap definitions so that
//! it cannot drift from them: a test fails when the page differs.

use std::fmt::Write as _;

use clap::CommandFactory as _;

use super::Cli;

/// The reference of every command, as Markdown.
pub fn reference() -> String {
    let mut page = String::from(
        "# The command line\n\n\
         Every command of the `portcullis` binary, generated from its definitions \
         (`UPDATE_DOCS=1 cargo test --lib cli_reference` rewrites this page). Commands that use \
         storage read the same settings as the server: the profile, `config/`, `.env` and the \
         environment ([configuration](configuration.md)).\n",
    );
    let mut root = Cli::command();
    root.build();
    let global: Vec<String> = root
        .get_arguments()
        .map(|arg| arg.get_id().to_string())
        .collect();
    write_command(&mut page, &root, "portcullis", &global);
    page
}

/// `command`'s section, then its subcommands'; `global` are the options listed under the root.
fn write_command(page: &mut String, command: &clap::Command, path: &str, global: &[String]) {
    let level = "#".repeat((path.matches(' ').count() + 2).min(4));
    let _ = write!(page, "\n{level} `{path}`\n\n");
    if let Some(about) = command.get_long_about().or(command.get_about()) {
        let _ = writeln!(page, "{about}\n");
    }
    // What follows the command's own name in clap's usage line.
    let usage = command.clone().render_usage().to_string();
    let rest = usage
        .rsplit_once(&format!("{} ", command.get_name()))
        .map_or("", |(_, rest)| rest.trim());
    let _ = writeln!(page, "```text\n{path} {rest}\n```");
    // The global options are listed once, under `portcullis`.
    let top = path == "portcullis";
    let arguments: Vec<_> = command
        .get_arguments()
        .filter(|arg| !arg.is_hide_set() && !["help", "version"].contains(&arg.get_id().as_str()))
        .filter(|arg| top || !global.contains(&arg.get_id().to_string()))
        .collect();
    if !arguments.is_empty() {
        page.push('\n');
        for arg in arguments {
            let name = match (arg.get_long(), arg.get_short()) {
                (Some(long), Some(short)) => format!("-{short}, --{long}"),
                (Some(long), None) => format!("--{long}"),
                (None, Some(short)) => format!("-{short}"),
                (None, None) => arg.get_value_names().map_or_else(
                    || arg.get_id().as_str().to_uppercase(),
                    |names| {
                        names
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(" ")
                    },
                ),
            };
            let help = arg
                .get_long_help()
                .or(arg.get_help())
                .map(|help| help.to_string().replace('\n', " "))
                .unwrap_or_default();
            let mut notes = Vec::new();
            let defaults: Vec<_> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            // A flag's `false` says nothing.
            if !defaults.is_empty() && defaults != ["false"] {
                notes.push(format!("default `{}`", defaults.join(",")));
            }
            if let Some(env) = arg.get_env() {
                notes.push(format!("environment `{}`", env.to_string_lossy()));
            }
            let notes = if notes.is_empty() {
                String::new()
            } else {
                format!(" ({})", notes.join("; "))
            };
            let help = help.trim_end_matches('.');
            let _ = if help.is_empty() {
                writeln!(page, "- `{name}`{notes}")
            } else {
                writeln!(page, "- `{name}`: {help}{notes}.")
            };
        }
    }
    for sub in command
        .get_subcommands()
        .filter(|sub| sub.get_name() != "help")
    {
        write_command(page, sub, &format!("{path} {}", sub.get_name()), global);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_reference_is_the_page_in_docs() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/cli.md");
        let generated = reference();
        if std::env::var_os("UPDATE_DOCS").is_some() {
            std::fs::write(path, &generated).unwrap();
        }
        let page = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            page == generated,
            "docs/cli.md differs from the commands: run `UPDATE_DOCS=1 cargo test --lib cli_reference`"
        );
    }

    #[test]
    fn every_command_is_in_the_reference() {
        let page = reference();
        for command in [
            "`portcullis serve`",
            "`portcullis user create`",
            "`portcullis health`",
            "`portcullis keys retire`",
        ] {
            assert!(page.contains(command), "{command}");
        }
    }
}
