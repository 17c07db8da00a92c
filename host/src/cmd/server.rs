//! `edr server ...`: the management server (crate `edr-fleet-server`).

use anyhow::Context;
use clap::Subcommand;
use std::path::PathBuf;

/// Default fleet directory.
const DEFAULT_DIR: &str = "/var/lib/edr-server";

#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// Create a fleet: operator and account keys, the NATS configuration, the first admin API token.
    Init {
        /// The fleet directory (created 0700).
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
        /// Fleet name.
        #[arg(long, default_value = "edr")]
        name: String,
        /// Listen address of the local NATS server.
        #[arg(long, default_value = "127.0.0.1:4222")]
        nats_listen: String,
        /// Listen address of the HTTP API.
        #[arg(long, default_value = "127.0.0.1:8480")]
        listen: String,
        /// Seconds between host heartbeats.
        #[arg(long, default_value_t = 30)]
        heartbeat_secs: u64,
        /// NATS over TLS: the NATS server's certificate (PEM); needs --nats-tls-key and --nats-ca.
        #[arg(long, requires_all = ["nats_tls_key", "nats_ca"])]
        nats_tls_cert: Option<PathBuf>,
        /// The NATS server certificate's private key (PEM).
        #[arg(long, requires_all = ["nats_tls_cert", "nats_ca"])]
        nats_tls_key: Option<PathBuf>,
        /// The CA that signed the NATS certificate (PEM); hosts get it at enrollment, pinned by the token.
        #[arg(long, requires_all = ["nats_tls_cert", "nats_tls_key"])]
        nats_ca: Option<PathBuf>,
    },
    /// Run the server: a local nats-server child (unless nats.start_local = false), consumers, API.
    Run {
        /// The fleet directory.
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
        /// Delete the index and rebuild it from the streams.
        #[arg(long)]
        rebuild_index: bool,
    },
    /// Console users (local accounts with Argon2id password hashes, in DIR/users.json).
    #[command(subcommand)]
    User(UserCommand),
    /// Make an API token (printed once).
    Token {
        /// Who holds it (recorded as the actor of their changes).
        name: String,
        /// viewer, responder or admin.
        #[arg(long, default_value = "viewer")]
        role: String,
        /// The fleet directory.
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user; the password is read from standard input (a prompt on a terminal), never from the command line.
    Add {
        /// Login name (1-64 letters, digits, - _ . @).
        name: String,
        /// viewer, responder or admin.
        #[arg(long)]
        role: String,
        /// The fleet directory.
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
    },
}

/// The new user's password: prompted twice on a terminal, else the first line of standard input.
fn read_password() -> anyhow::Result<String> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("password: ")?;
        let again = rpassword::prompt_password("again: ")?;
        anyhow::ensure!(first == again, "the passwords differ");
        return Ok(first);
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).context("reading the password from standard input")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

pub fn run(cmd: ServerCommand) -> anyhow::Result<()> {
    match cmd {
        ServerCommand::Init { dir, name, nats_listen, listen, heartbeat_secs, nats_tls_cert, nats_tls_key, nats_ca } => {
            anyhow::ensure!((1..=3600).contains(&heartbeat_secs), "--heartbeat-secs {heartbeat_secs}: use 1 to 3600");
            let nats_tls = match (nats_tls_cert, nats_tls_key, nats_ca) {
                (Some(cert_file), Some(key_file), Some(ca_file)) => Some(edr_fleet_server::fleet::NatsTls { cert_file, key_file, ca_file }),
                _ => None,
            };
            let opts = edr_fleet_server::InitOptions { name, nats_listen, http_listen: listen, heartbeat_secs, nats_tls };
            let created = edr_fleet_server::fleet::init(&dir, &opts)?;
            println!("fleet created in {}", created.fleet.dir.path().display());
            println!("admin API token (also in {}): {}", created.fleet.dir.join("admin.token").display(), created.admin_token);
            println!("next: edr server run --dir {}", dir.display());
            Ok(())
        }
        ServerCommand::Run { dir, rebuild_index } => Ok(edr_console::run_blocking(&dir, rebuild_index)?),
        ServerCommand::User(UserCommand::Add { name, role, dir }) => {
            let role = edr_fleet_server::api_auth::Role::parse(&role).with_context(|| format!("--role {role:?}: use viewer, responder or admin"))?;
            edr_console::add_user(&dir, &name, role, &read_password()?)?;
            println!("user {name} ({}) added; log in at {}/console/", role.as_str(), edr_fleet_server::Fleet::open(&dir)?.config.http.public_url);
            Ok(())
        }
        ServerCommand::Token { name, role, dir } => {
            let role = edr_fleet_server::api_auth::Role::parse(&role).with_context(|| format!("--role {role:?}: use viewer, responder or admin"))?;
            let fleet = edr_fleet_server::Fleet::open(&dir)?;
            println!("{}", edr_fleet_server::api_auth::add_token(&fleet.dir, &name, role)?);
            Ok(())
        }
    }
}
