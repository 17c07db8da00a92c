//! `edr sigma check`: which Sigma rules the `sigma` plugin can serve.

use std::path::PathBuf;

/// `edr sigma` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum SigmaCommand {
    /// Report, for every rule file under DIR, whether it loads or why not.
    Check {
        dir: PathBuf,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Returns whether every rule loaded (the exit status).
pub fn run(cmd: SigmaCommand) -> anyhow::Result<bool> {
    match cmd {
        SigmaCommand::Check { dir, json } => {
            anyhow::ensure!(dir.is_dir(), "{} is not a directory", dir.display());
            let report = edr_sigma_core::check_dir(&dir);
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.render_text());
            }
            Ok(report.all_loaded())
        }
    }
}
