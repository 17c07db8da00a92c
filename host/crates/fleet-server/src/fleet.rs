//! The fleet directory: its configuration, keys and the generated NATS
//! configuration. `edr server init` creates it; `edr server run` reads it.
//!
//! ```text
//! DIR/ (0700)
//!   fleet.toml          the server's settings (edit freely)
//!   keys/ (0700)        nkey seeds: operator, operator-signing, account, account-signing, system;
//!                       command.ed25519 (the operator's command-signing key: `edr fleet` signs
//!                       with it; move it to the operators' machine, the server reads only
//!                       command.pub); all 0600
//!   nats/nats.conf      the NATS server configuration (operator JWT, preloaded accounts)
//!   nats/operator.jwt
//!   server.creds        the management server's own NATS user (0600)
//!   api-tokens.json     sha256 of each API token, its name and role (0600)
//!   admin.token         the first admin token, for the local CLI (0600)
//!   index.db            the query index (rebuilt from the streams when missing)
//! ```

use crate::api_auth::{ApiToken, Role};
use crate::error::FleetError;
use crate::jwt;
use edr_datadir::DataDir;
use nkeys::KeyPair;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `fleet.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// Name of the fleet (the operator's and account's name).
    pub name: String,
    /// The NATS side.
    pub nats: NatsSettings,
    /// The HTTP API.
    pub http: HttpSettings,
    /// Seconds between a host's heartbeats (sent to hosts at enrollment).
    pub heartbeat_secs: u64,
    /// Durable consumer names start with this; server processes sharing one
    /// index share the consumers (and so the work).
    pub consumer_prefix: String,
    /// Where the server notifies the operator of every alert (`[notify]`:
    /// `[[notify.syslog]]`, `[[notify.webhook]]`, `[[notify.nats]]`, the
    /// agent's output settings). Not written by `init`: add it by hand.
    #[serde(default, skip_serializing)]
    pub notify: edr_output::OutputsConfig,
    /// Retention and replication of the JetStream streams (`[streams]`;
    /// defaults when absent, so older `fleet.toml` files keep working).
    #[serde(default)]
    pub streams: StreamSettings,
}

/// `[streams]` of `fleet.toml`: how long the fleet's streams keep what
/// hosts sent, and on how many NATS nodes. Applied to the streams at every
/// server start (a changed value updates the existing stream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamSettings {
    /// Days the central record (`EDR_EVENTS`) keeps a batch; 0: until
    /// `events_max_gib` says otherwise. The oldest batches go first (age
    /// limits are the only removal: no host and no API call can delete).
    pub events_max_age_days: u64,
    /// GiB the central record may hold before its oldest batches go; 0: no
    /// size limit.
    pub events_max_gib: u64,
    /// Days `EDR_ALERTS` keeps an alert; 0: forever (the default: alerts are
    /// few, and triage refers to them).
    pub alerts_max_age_days: u64,
    /// Replicas of every stream (1-5; more than 1 needs a NATS cluster
    /// with at least that many JetStream nodes).
    pub replicas: usize,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings { events_max_age_days: 90, events_max_gib: 0, alerts_max_age_days: 0, replicas: 1 }
    }
}

impl StreamSettings {
    /// The central record's age limit (`None`: no limit).
    pub fn events_max_age(&self) -> Option<std::time::Duration> {
        (self.events_max_age_days > 0).then(|| std::time::Duration::from_secs(self.events_max_age_days * 86_400))
    }

    /// Refuses values JetStream would refuse later, with what to write instead.
    ///
    /// # Errors
    /// A replica count outside 1-5, or a limit too large to express.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=5).contains(&self.replicas) {
            return Err(format!("[streams] replicas = {}: JetStream keeps 1 to 5 replicas of a stream", self.replicas));
        }
        for (name, days) in [("events_max_age_days", self.events_max_age_days), ("alerts_max_age_days", self.alerts_max_age_days)] {
            if days > 36_500 {
                return Err(format!("[streams] {name} = {days}: at most 36500 days (100 years); 0 keeps without an age limit"));
            }
        }
        if self.events_max_gib > 1 << 20 {
            return Err(format!("[streams] events_max_gib = {}: at most 1048576 (1 PiB); 0 is no size limit", self.events_max_gib));
        }
        Ok(())
    }
}

/// `[nats]` of `fleet.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSettings {
    /// Where the management server connects.
    pub url: String,
    /// What hosts are told to connect to.
    pub public_urls: Vec<String>,
    /// Start a local `nats-server -js -c DIR/nats/nats.conf` child (false: an external NATS runs the generated config).
    pub start_local: bool,
    /// The local child's listen address.
    pub listen: String,
    /// The `nats-server` program.
    pub program: String,
    /// TLS on the NATS listener (`[nats.tls]`); none: plain TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<NatsTls>,
}

/// `[nats.tls]` of `fleet.toml`: the NATS listener speaks TLS with this
/// certificate, and every client (the server, each host) verifies it
/// against `ca_file`. Hosts get the CA at enrollment; its sha256 is in the
/// enrollment token, so a host trusts only the CA its token pins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsTls {
    /// The NATS server's certificate chain (PEM); its names must cover the
    /// host part of every URL in `public_urls` and `url`.
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
    /// The CA that signed it (PEM), which clients trust.
    pub ca_file: PathBuf,
}

/// `[http]` of `fleet.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Listen address of the API.
    pub listen: String,
    /// The API's URL as hosts reach it (written into enrollment tokens).
    pub public_url: String,
}

/// Options of `edr server init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Fleet name.
    pub name: String,
    /// NATS listen address of the local child (`127.0.0.1:4222`).
    pub nats_listen: String,
    /// HTTP listen address (`127.0.0.1:8480`).
    pub http_listen: String,
    /// Seconds between heartbeats.
    pub heartbeat_secs: u64,
    /// TLS for NATS: the files are copied into `DIR/nats/tls/`.
    pub nats_tls: Option<NatsTls>,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions { name: "edr".into(), nats_listen: "127.0.0.1:4222".into(), http_listen: "127.0.0.1:8480".into(), heartbeat_secs: 30, nats_tls: None }
    }
}

/// An open fleet directory.
#[derive(Debug)]
pub struct Fleet {
    /// The directory.
    pub dir: DataDir,
    /// Its `fleet.toml`.
    pub config: FleetConfig,
    /// The account's public key (`A...`): hosts' users belong to it.
    pub account: String,
    /// The account signing key: signs the hosts' user JWTs.
    pub account_signing: KeyPair,
    /// The operator's command-signing public key, hex (the server never
    /// needs the private half: operators sign, the server relays).
    pub command_public: String,
}

/// What `init` made.
#[derive(Debug)]
pub struct Created {
    /// The fleet.
    pub fleet: Fleet,
    /// The first admin API token (also in `admin.token`).
    pub admin_token: String,
}

const KEYS: [&str; 5] = ["operator", "operator-signing", "account", "account-signing", "system"];

fn key_err(name: &str) -> impl FnOnce(nkeys::error::Error) -> FleetError + '_ {
    move |e| FleetError::Key { name: name.to_string(), problem: e.to_string() }
}

/// Creates a fleet in `path`: keys, NATS configuration, the server's NATS
/// user and the first admin token. Refuses a directory already holding one.
///
/// # Errors
/// [`FleetError`] naming the file or key that could not be made.
pub fn init(path: &Path, opts: &InitOptions) -> Result<Created, FleetError> {
    let dir = DataDir::open_or_create(path, edr_datadir::agent_uid())?;
    if dir.join("fleet.toml").exists() {
        return Err(FleetError::AlreadyInitialised(dir.path().to_path_buf()));
    }
    let keys = dir.subdir("keys")?;
    let pairs = [KeyPair::new_operator(), KeyPair::new_operator(), KeyPair::new_account(), KeyPair::new_account(), KeyPair::new_account()];
    for (name, kp) in KEYS.iter().zip(&pairs) {
        keys.write_atomically(&format!("{name}.nk"), kp.seed().map_err(key_err(name))?.as_bytes())?;
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| FleetError::Key { name: "command".into(), problem: e.to_string() })?;
    keys.write_atomically("command.ed25519", hex::encode(seed).as_bytes())?;
    let command_public = hex::encode(ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key().to_bytes());
    keys.write_atomically("command.pub", command_public.as_bytes())?;
    let [operator, operator_signing, account, account_signing, system] = pairs;
    let tls = opts.nats_tls.as_ref().map(|t| copy_tls_files(&dir, t)).transpose()?;
    let scheme = if tls.is_some() { "tls" } else { "nats" };
    let config = FleetConfig {
        name: opts.name.clone(),
        nats: NatsSettings {
            url: format!("{scheme}://{}", opts.nats_listen),
            public_urls: vec![format!("{scheme}://{}", opts.nats_listen)],
            start_local: true,
            listen: opts.nats_listen.clone(),
            program: "nats-server".into(),
            tls,
        },
        http: HttpSettings { listen: opts.http_listen.clone(), public_url: format!("http://{}", opts.http_listen) },
        heartbeat_secs: opts.heartbeat_secs,
        consumer_prefix: "edr-server".into(),
        notify: Default::default(),
        streams: StreamSettings::default(),
    };
    write_nats_config(&dir, &config, &operator, &operator_signing, &account, &account_signing, &system)?;
    let server_user = KeyPair::new_user();
    let server_jwt = jwt::user(&account_signing, &account.public_key(), &server_user.public_key(), "edr-server", &jwt::Permissions::default())?;
    dir.write_atomically("server.creds", creds(&server_jwt, &server_user.seed().map_err(key_err("server user"))?).as_bytes())?;
    let (admin, token) = ApiToken::generate("admin", Role::Admin);
    crate::api_auth::save_tokens(&dir, &[admin])?;
    dir.write_atomically("admin.token", format!("{token}\n").as_bytes())?;
    let text = toml::to_string_pretty(&config).map_err(|e| FleetError::File { path: dir.join("fleet.toml"), problem: e.to_string() })?;
    dir.write_atomically("fleet.toml", text.as_bytes())?;
    tracing::info!(dir = %dir.path().display(), operator = %operator.public_key(), account = %account.public_key(), "fleet created");
    let fleet = Fleet { account: account.public_key(), account_signing, command_public, config, dir };
    Ok(Created { fleet, admin_token: token })
}

/// Copies the TLS files into `DIR/nats/tls/` (0600), after checking that
/// each is PEM of the right kind, so a typo fails at `init`, not when the
/// first host connects.
fn copy_tls_files(dir: &DataDir, t: &NatsTls) -> Result<NatsTls, FleetError> {
    let tls = dir.subdir("nats")?.subdir("tls")?;
    let copy = |from: &PathBuf, name: &str, kind: &str| -> Result<PathBuf, FleetError> {
        let text = std::fs::read_to_string(from).map_err(|e| FleetError::File { path: from.clone(), problem: format!("cannot read it: {e}") })?;
        if !text.lines().any(|l| l.starts_with("-----BEGIN ") && l.contains(kind)) {
            return Err(FleetError::File { path: from.clone(), problem: format!("not a PEM file holding a {kind}") });
        }
        tls.write_atomically(name, text.as_bytes())?;
        Ok(tls.join(name))
    };
    Ok(NatsTls {
        cert_file: copy(&t.cert_file, "server.pem", "CERTIFICATE")?,
        key_file: copy(&t.key_file, "server.key", "PRIVATE KEY")?,
        ca_file: copy(&t.ca_file, "ca.pem", "CERTIFICATE")?,
    })
}

#[allow(clippy::too_many_arguments)]
fn write_nats_config(
    dir: &DataDir,
    cfg: &FleetConfig,
    operator: &KeyPair,
    operator_signing: &KeyPair,
    account: &KeyPair,
    account_signing: &KeyPair,
    system: &KeyPair,
) -> Result<(), FleetError> {
    let nats = dir.subdir("nats")?;
    let op_jwt = jwt::operator(operator, operator_signing, &system.public_key(), &cfg.name)?;
    let acct_jwt = jwt::account(operator_signing, &account.public_key(), &account_signing.public_key(), &cfg.name, true)?;
    let sys_jwt = jwt::account(operator_signing, &system.public_key(), &system.public_key(), "SYS", false)?;
    nats.write_atomically("operator.jwt", op_jwt.as_bytes())?;
    let conf = format!(
        "# Generated by `edr server init`: the fleet's NATS server. Hosts authenticate with user JWTs\n\
         # the management server signs with the account signing key; nothing here changes when hosts enroll.\n\
         listen: \"{listen}\"\n\
         server_name: \"edr-{name}\"\n\
         jetstream {{ store_dir: \"{store}\" }}\n\
         operator: \"{op}\"\n\
         system_account: \"{sys}\"\n\
         resolver: MEMORY\n\
         resolver_preload: {{\n  {acct}: \"{acct_jwt}\"\n  {sys}: \"{sys_jwt}\"\n}}\n{tls}",
        tls = cfg.nats.tls.as_ref().map_or(String::new(), |t| format!(
            "# TLS: clients verify this certificate against nats/tls/ca.pem (hosts get the CA at enrollment).\n\
             tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  timeout: 5\n}}\n",
            t.cert_file.display(),
            t.key_file.display()
        )),
        listen = cfg.nats.listen,
        name = cfg.name,
        store = nats.join("jetstream").display(),
        op = nats.join("operator.jwt").display(),
        sys = system.public_key(),
        acct = account.public_key(),
    );
    nats.write_atomically("nats.conf", conf.as_bytes())?;
    Ok(())
}

/// A `.creds` file's text: the user JWT and its nkey seed.
pub fn creds(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    )
}

fn read_text(dir: &DataDir, name: &str) -> Result<String, FleetError> {
    let bytes = dir.read_limited(name, 1 << 20)?.ok_or_else(|| FleetError::File { path: dir.join(name), problem: "missing".into() })?;
    String::from_utf8(bytes).map_err(|_| FleetError::File { path: dir.join(name), problem: "not UTF-8".into() })
}

impl Fleet {
    /// Opens the fleet in `path`.
    ///
    /// # Errors
    /// [`FleetError::NotInitialised`] when there is none; a file or key error otherwise.
    pub fn open(path: &Path) -> Result<Fleet, FleetError> {
        if !path.join("fleet.toml").exists() {
            return Err(FleetError::NotInitialised(path.to_path_buf()));
        }
        let dir = DataDir::open_or_create(path, edr_datadir::agent_uid())?;
        let text = read_text(&dir, "fleet.toml")?;
        let config: FleetConfig = toml::from_str(&text).map_err(|e| FleetError::File { path: dir.join("fleet.toml"), problem: e.to_string() })?;
        config.streams.check().map_err(|problem| FleetError::File { path: dir.join("fleet.toml"), problem })?;
        let keys = dir.subdir("keys")?;
        let account = KeyPair::from_seed(read_text(&keys, "account.nk")?.trim()).map_err(key_err("account"))?;
        let account_signing = KeyPair::from_seed(read_text(&keys, "account-signing.nk")?.trim()).map_err(key_err("account-signing"))?;
        let command_public = read_text(&keys, "command.pub")?.trim().to_string();
        edr_fleet_proto::command::parse_key(&command_public).map_err(|e| FleetError::Key { name: "keys/command.pub".into(), problem: e })?;
        Ok(Fleet { account: account.public_key(), account_signing, command_public, config, dir })
    }

    /// The management server's own credentials (`server.creds`).
    ///
    /// # Errors
    /// When the file is missing or unreadable.
    pub fn server_creds(&self) -> Result<String, FleetError> {
        read_text(&self.dir, "server.creds")
    }

    /// The generated NATS configuration file.
    pub fn nats_config_path(&self) -> PathBuf {
        self.dir.join("nats").join("nats.conf")
    }

    /// The index database file.
    pub fn index_path(&self) -> PathBuf {
        self.dir.join("index.db")
    }

    /// Signs a user JWT for host `host_id` with public key `user_key`, confined to its subjects.
    ///
    /// # Errors
    /// When signing fails.
    pub fn host_jwt(&self, host_id: &str, user_key: &str) -> Result<String, FleetError> {
        Ok(jwt::user(&self.account_signing, &self.account, user_key, host_id, &jwt::host_permissions(host_id))?)
    }

    /// The operator's command-signing public key, hex (pinned by hosts).
    pub fn command_public_key(&self) -> String {
        self.command_public.clone()
    }

    /// The CA that NATS clients verify the fleet's NATS server against (PEM
    /// text), when `[nats.tls]` is set.
    ///
    /// # Errors
    /// When the configured file cannot be read.
    pub fn nats_ca_pem(&self) -> Result<Option<String>, FleetError> {
        let Some(tls) = &self.config.nats.tls else { return Ok(None) };
        std::fs::read_to_string(&tls.ca_file)
            .map(Some)
            .map_err(|e| FleetError::File { path: tls.ca_file.clone(), problem: format!("the NATS CA ([nats.tls] ca_file) cannot be read: {e}") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_is_read_from_fleet_toml_and_typos_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let created = init(&dir.path().join("f"), &InitOptions::default()).unwrap();
        let mut text = toml::to_string_pretty(&created.fleet.config).unwrap();
        text.push_str("\n[[notify.webhook]]\nurl = \"https://siem.example/edr\"\n\n[[notify.syslog]]\naddress = \"udp://10.0.0.5:514\"\n");
        let cfg: FleetConfig = toml::from_str(&text).unwrap();
        assert_eq!(cfg.notify.webhook[0].url, "https://siem.example/edr");
        assert_eq!(cfg.notify.syslog[0].address, "udp://10.0.0.5:514");
        let typo = text.replace("[[notify.webhook]]", "[[notify.webhok]]");
        let e = toml::from_str::<FleetConfig>(&typo).unwrap_err().to_string();
        assert!(e.contains("webhok"), "{e}");
    }
}
