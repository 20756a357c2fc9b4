//! `keygate routes check|explain`: validate a route table, explain its
//! decision for a request; and the table loader `serve --routes` shares.

use std::path::{Path, PathBuf};

use keygate::RouteTable;

/// `keygate routes ...`.
#[derive(clap::Subcommand, Debug)]
pub enum RoutesCommand {
    /// Validate a route table; print its rule count, or the parse error.
    Check {
        /// The table file.
        file: PathBuf,
    },
    /// Print the rule that wins for METHOD PATH, and why the others lose.
    Explain {
        /// The table file.
        file: PathBuf,
        /// The request method, e.g. `POST`.
        method: String,
        /// The request path as sent, e.g. `/v1/devboxes/dbx_1/execute`.
        path: String,
    },
}

/// Reads and parses a table; the error names the file.
pub fn load(path: &Path) -> Result<RouteTable, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read route table `{}`: {e}", path.display()))?;
    text.parse()
        .map_err(|e| format!("route table `{}`: {e}", path.display()))
}

/// Runs `keygate routes ...`.
pub fn run(command: &RoutesCommand) -> Result<(), String> {
    match command {
        RoutesCommand::Check { file } => {
            let table = load(file)?;
            let default = match table.default_decision() {
                Some((d, line)) => format!("`{d}` (line {line})"),
                None => String::from("deny (no `default` line)"),
            };
            println!(
                "ok: `{}` has {} rules; unmatched requests: {default}",
                file.display(),
                table.len()
            );
            Ok(())
        }
        RoutesCommand::Explain { file, method, path } => {
            let table = load(file)?;
            let explanation = table
                .explain(method, path)
                .map_err(|e| format!("{e} (answered with 400)"))?;
            // The request is echoed: redacted, should a token be in it.
            print!("{}", keygate::redact_tokens(&explanation.to_string()));
            Ok(())
        }
    }
}
