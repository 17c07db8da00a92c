//! The agent's TOML configuration. Every key is optional; `edr agent` with no
//! file runs on the defaults below. Unknown keys are errors (a typo must not
//! silently turn a setting off), and every error names the line and the key.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Where the agent keeps its state (alerts file, compile cache, ...).
    pub data_dir: PathBuf,
    /// `[runtime]`.
    pub runtime: RuntimeSection,
    /// `[plugins]`.
    pub plugins: PluginsSection,
    /// `[output]`.
    pub output: OutputSection,
    /// `[collect]`.
    pub collect: CollectSection,
    /// `[packs]`.
    pub packs: PacksSection,
    /// `[trust]`.
    pub trust: TrustSection,
    /// `[respond]`: the response engine (see `edr_respond::ResponseConfig`):
    /// management endpoints for isolation, protected names, per-pack grants
    /// (`[respond.packs."<pack id>"] actions = [...], mode = "simulate"|"enforce"`).
    /// The stores it leaves out go under `data_dir` ([`AgentConfig::respond_config`]).
    pub respond: edr_respond::ResponseConfig,
    /// `[store]`.
    pub store: StoreSection,
    /// `[metrics]`.
    pub metrics: MetricsSection,
    /// `[fleet]`: the link to the management server (crate `edr-fleet-link`).
    pub fleet: edr_fleet_link::FleetConfig,
    /// `[incidents]`: alerts grouped by process tree (crate `edr-incident`).
    pub incidents: IncidentsSection,
}

/// `[incidents]`: alerts that share a process tree within a window form one
/// incident; repeats of a rule on the same process are counted in the
/// record and not sent to the outputs again.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IncidentsSection {
    /// Group at all (off: every alert goes everywhere, with no `edr.incident`).
    pub enabled: bool,
    /// An incident takes alerts up to this many seconds after its last one.
    pub window_secs: u64,
    /// Generations above an alerted process that root its storyline (1: the parent).
    pub depth: u64,
    /// Repeats are not sent to outputs again (the record keeps them all).
    pub suppress_repeats: bool,
}

impl Default for IncidentsSection {
    fn default() -> Self {
        Self { enabled: true, window_secs: 1800, depth: 1, suppress_repeats: true }
    }
}

impl IncidentsSection {
    /// The grouping's configuration (`None` when grouping is off).
    pub fn grouping(&self) -> Option<edr_incident::IncidentConfig> {
        self.enabled.then(|| edr_incident::IncidentConfig {
            window_ns: self.window_secs.saturating_mul(1_000_000_000),
            depth: self.depth as usize,
            suppress_repeats: self.suppress_repeats,
            ..Default::default()
        })
    }
}

/// `[metrics]`: the Prometheus endpoint. Off unless `listen` is set; it is
/// unauthenticated, so only loopback addresses are accepted.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// `127.0.0.1:9477`, `[::1]:9477`, or `localhost:9477`: serves `GET /metrics`.
    pub listen: Option<String>,
}

impl MetricsSection {
    /// The address to listen on, checked to be loopback.
    pub fn address(&self) -> Result<Option<std::net::SocketAddr>, String> {
        let Some(listen) = &self.listen else { return Ok(None) };
        let addr: std::net::SocketAddr = match listen.strip_prefix("localhost:") {
            Some(port) => format!("127.0.0.1:{port}").parse(),
            None => listen.parse(),
        }
        .map_err(|e| format!("not an address:port ({e})"))?;
        if !addr.ip().is_loopback() {
            return Err(format!("{} is not a loopback address: the metrics endpoint has no authentication, so it only listens on 127.0.0.1 or ::1", addr.ip()));
        }
        Ok(Some(addr))
    }
}

/// `[store]`: the always-on record of every event, alert and action.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// Record at all.
    pub enabled: bool,
    /// The SQLite file (relative paths are under `data_dir`).
    pub path: PathBuf,
    /// Events older than this many days are deleted (0: no age limit).
    pub max_age_days: u64,
    /// The store is kept under this many MiB, oldest events first (0: no limit).
    pub max_size_mb: u64,
}

impl Default for StoreSection {
    fn default() -> Self {
        Self { enabled: true, path: PathBuf::from("events.db"), max_age_days: 30, max_size_mb: 10 * 1024 }
    }
}

impl AgentConfig {
    /// The store's configuration.
    pub fn store_config(&self) -> edr_store::StoreConfig {
        let path = self.data_path(&self.store.path).unwrap_or_else(|| self.data_dir.join("events.db"));
        let mut c = edr_store::StoreConfig::new(path);
        c.max_age = (self.store.max_age_days > 0).then(|| std::time::Duration::from_secs(self.store.max_age_days * 86_400));
        c.max_bytes = (self.store.max_size_mb > 0).then_some(self.store.max_size_mb << 20);
        c
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./edr-data"),
            runtime: RuntimeSection::default(),
            plugins: PluginsSection::default(),
            output: OutputSection::default(),
            collect: CollectSection::default(),
            packs: PacksSection::default(),
            trust: TrustSection::default(),
            respond: edr_respond::ResponseConfig::default(),
            store: StoreSection::default(),
            metrics: MetricsSection::default(),
            fleet: edr_fleet_link::FleetConfig::default(),
            incidents: IncidentsSection::default(),
        }
    }
}

/// `[packs]`: where signed detection packs come from and how many are kept.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PacksSection {
    /// Drop-in directory watched for `*.edrpack` + `*.edrpack.minisig`
    /// (relative paths are under `data_dir`).
    pub dir: PathBuf,
    /// Base URL of a static update server holding `index.json` and the packs.
    pub update_url: Option<String>,
    /// Seconds between polls of `update_url`.
    pub poll_interval_secs: u64,
    /// Good versions kept per pack for rollback.
    pub keep_versions: usize,
    /// Trust the key the built-in pack was signed with at build time.
    pub trust_builtin_key: bool,
    /// Ceiling on a pack's requested call deadline, ms.
    pub max_call_deadline_ms: u64,
    /// Ceiling on a pack's requested memory cap, MiB.
    pub max_memory_mb: usize,
}

impl Default for PacksSection {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("packs-incoming"),
            update_url: None,
            poll_interval_secs: 300,
            keep_versions: 3,
            trust_builtin_key: true,
            max_call_deadline_ms: 1000,
            max_memory_mb: 256,
        }
    }
}

/// `[trust]`: the publisher keys packs must be signed with.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrustSection {
    /// `[[trust.keys]]`.
    pub keys: Vec<TrustedKey>,
}

/// One pinned publisher key: the minisign public key (its base64 line, as
/// in the second line of a `.pub` file), or a path to the `.pub` file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedKey {
    /// A name for logs and status.
    pub name: String,
    /// The key's base64 line.
    pub public_key: Option<String>,
    /// Or its `.pub` file.
    pub public_key_file: Option<PathBuf>,
}

/// `[runtime]`: batching and the limits every plugin runs under.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSection {
    /// Events per batch handed to a plugin.
    pub batch_size: usize,
    /// A partial batch is dispatched after this long (ms).
    pub batch_timeout_ms: u64,
    /// Deadline of one plugin call (one batch), ms.
    pub call_deadline_ms: u64,
    /// Deadline of a plugin's init, ms.
    pub init_deadline_ms: u64,
    /// Linear-memory cap per plugin instance, MiB.
    pub memory_mb: usize,
    /// Findings kept per plugin per batch.
    pub max_findings_per_batch: usize,
    /// Failures within `strike_window_secs` that quarantine a plugin.
    pub max_strikes: usize,
    /// The window of `max_strikes`, seconds.
    pub strike_window_secs: u64,
    /// Batches queued per plugin before the agent waits (and, in live mode,
    /// drops that plugin's batch, counted).
    pub plugin_queue: usize,
    /// Cache compiled plugins under `<data_dir>/cache`.
    pub compile_cache: bool,
    /// Cache compiled plugins under `$XDG_CACHE_HOME/edr` (or `~/.cache/edr`)
    /// instead (what `edr replay` does without a config).
    #[serde(skip)]
    pub user_cache: bool,
}

impl Default for RuntimeSection {
    fn default() -> Self {
        Self {
            batch_size: 256,
            batch_timeout_ms: 10,
            call_deadline_ms: 100,
            init_deadline_ms: 5000,
            memory_mb: 64,
            max_findings_per_batch: 1024,
            max_strikes: 3,
            strike_window_secs: 600,
            plugin_queue: 64,
            compile_cache: true,
            user_cache: false,
        }
    }
}

/// `[plugins]`: which plugins to load and their settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsSection {
    /// Load the built-in detection plugins.
    pub builtin: bool,
    /// A directory of extra plugins (`*.wasm` components).
    pub dir: Option<PathBuf>,
    /// Plugin names not to load.
    pub disable: Vec<String>,
    /// Per-plugin settings: `[plugins.settings.<plugin>]` tables of key = value.
    pub settings: BTreeMap<String, BTreeMap<String, toml::Value>>,
    /// Per-plugin limit overrides: `[plugins.limits.<plugin>]`.
    pub limits: BTreeMap<String, LimitOverrides>,
    /// Extra data files per plugin: `plugins.data.<plugin> = ["/path/dir", ...]`
    /// (e.g. Sigma rule directories for the `sigma` plugin).
    pub data: BTreeMap<String, Vec<PathBuf>>,
    /// Per-plugin capability grants: `plugins.capabilities.<plugin> = ["log", ...]`.
    /// Plugins not listed get log, clock, state and process (not respond).
    pub capabilities: BTreeMap<String, Vec<String>>,
}

impl Default for PluginsSection {
    fn default() -> Self {
        Self {
            builtin: true,
            dir: None,
            disable: Vec::new(),
            settings: BTreeMap::new(),
            data: BTreeMap::new(),
            limits: BTreeMap::new(),
            capabilities: BTreeMap::new(),
        }
    }
}

/// Limits one plugin runs under instead of the `[runtime]` defaults.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    /// `runtime.call_deadline_ms` for this plugin.
    pub call_deadline_ms: Option<u64>,
    /// `runtime.init_deadline_ms` for this plugin.
    pub init_deadline_ms: Option<u64>,
    /// `runtime.memory_mb` for this plugin.
    pub memory_mb: Option<usize>,
    /// `runtime.max_findings_per_batch` for this plugin.
    pub max_findings_per_batch: Option<usize>,
}

/// `[output]`: where alerts go.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputSection {
    /// One ECS JSON alert per line on standard output.
    pub stdout: bool,
    /// JSONL alerts file (relative paths are under `data_dir`; "" disables).
    pub alerts_file: PathBuf,
    /// Every event as ECS JSONL (relative paths are under `data_dir`; "" disables).
    pub events_file: PathBuf,
    /// `[output.syslog]` (or `[[output.syslog]]` for several): RFC 5424 receivers.
    #[serde(deserialize_with = "edr_output::one_or_many")]
    pub syslog: Vec<edr_output::SyslogConfig>,
    /// `[output.webhook]`: HTTP POST with a disk spool and retries.
    #[serde(deserialize_with = "edr_output::one_or_many")]
    pub webhook: Vec<edr_output::WebhookConfig>,
    /// `[output.nats]`: NATS JetStream with a disk spool and publish acks.
    #[serde(deserialize_with = "edr_output::one_or_many")]
    pub nats: Vec<edr_output::NatsConfig>,
}

impl OutputSection {
    /// The outputs that leave the host (syslog, webhook, NATS).
    pub fn remote(&self) -> edr_output::OutputsConfig {
        edr_output::OutputsConfig { syslog: self.syslog.clone(), webhook: self.webhook.clone(), nats: self.nats.clone() }
    }

    /// The outputs beyond stdout and the JSONL files, described for people.
    pub fn extra_outputs(&self) -> Vec<String> {
        self.remote().describe()
    }
}

impl Default for OutputSection {
    fn default() -> Self {
        // Every event goes to the store; the JSONL copy is opt-in.
        Self {
            stdout: true,
            alerts_file: PathBuf::from("alerts.jsonl"),
            events_file: PathBuf::new(),
            syslog: Vec::new(),
            webhook: Vec::new(),
            nats: Vec::new(),
        }
    }
}

/// `[collect]`: where events come from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectSection {
    /// `live` (the host's own telemetry), `stdin`, or a path to an ECS JSONL file.
    pub source: EventSource,
    /// Process collector: `auto` (netlink, else polling), `netlink`, `poll`, `off`.
    #[serde(deserialize_with = "from_str")]
    pub process: edr_collect::ProcessMode,
    /// File collector: `auto` (fanotify, else inotify), `fanotify`, `inotify`, `off`.
    #[serde(deserialize_with = "from_str")]
    pub file: edr_collect::FileMode,
    /// Network collector: `auto` (eBPF for TCP + polled UDP, else polling), `ebpf`, `procfs`, `off`.
    #[serde(deserialize_with = "from_str")]
    pub network: edr_collect::NetworkMode,
    /// Login collector: `auto`, `tail`, `off`.
    #[serde(deserialize_with = "from_str")]
    pub login: edr_collect::LoginMode,
    /// Paths (globs) the file collector watches; default: the places detections care about.
    pub file_include: Option<Vec<String>>,
    /// Extra paths (globs) not to report, added to the built-in noise list.
    pub file_exclude: Vec<String>,
    /// Auth logs to follow for logins (default /var/log/auth.log, /var/log/secure).
    pub auth_logs: Option<Vec<PathBuf>>,
    /// Events queued between the collectors and the pipeline; beyond, drops are counted.
    pub queue: usize,
}

impl Default for CollectSection {
    fn default() -> Self {
        Self {
            source: EventSource::Live,
            process: edr_collect::ProcessMode::Auto,
            file: edr_collect::FileMode::Auto,
            network: edr_collect::NetworkMode::Auto,
            login: edr_collect::LoginMode::Auto,
            file_include: None,
            file_exclude: Vec::new(),
            auth_logs: None,
            queue: 65_536,
        }
    }
}

/// `collect.source`: where the agent's events come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum EventSource {
    /// The host's own telemetry (`live`): the collectors.
    #[default]
    Live,
    /// ECS JSONL on standard input (`stdin`).
    Stdin,
    /// An ECS JSONL file (any other value: its path).
    File(PathBuf),
}

impl std::fmt::Display for EventSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EventSource::Live => f.write_str("live"),
            EventSource::Stdin => f.write_str("stdin"),
            EventSource::File(p) => write!(f, "{}", p.display()),
        }
    }
}

impl From<&str> for EventSource {
    fn from(s: &str) -> Self {
        match s {
            "live" => EventSource::Live,
            "stdin" => EventSource::Stdin,
            path => EventSource::File(PathBuf::from(path)),
        }
    }
}

impl<'de> Deserialize<'de> for EventSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Err(serde::de::Error::custom("empty; use `live`, `stdin` or the path of an ECS JSONL file"));
        }
        Ok(EventSource::from(s.as_str()))
    }
}

impl Serialize for EventSource {
    /// The configuration's word: `live`, `stdin` or the path.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A value read through its `FromStr` (the collectors' modes), so the
/// error names the allowed words and toml adds the line.
fn from_str<'de, D: Deserializer<'de>, T: std::str::FromStr<Err = String>>(d: D) -> Result<T, D::Error> {
    String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
}

impl CollectSection {
    /// The collectors' configuration; `data_dir` is never watched (the agent
    /// writes there: watching it would feed the agent its own writes).
    pub fn collect_config(&self, data_dir: &Path) -> edr_collect::CollectConfig {
        let mut c = edr_collect::CollectConfig::default();
        c.process.mode = self.process;
        c.file.mode = self.file;
        c.network.mode = self.network;
        c.login.mode = self.login;
        if let Some(inc) = &self.file_include {
            c.file.include = inc.clone();
        }
        c.file.exclude.extend(self.file_exclude.iter().cloned());
        if let Some(logs) = &self.auth_logs {
            c.login.auth_logs = logs.clone();
        }
        let data_dir = data_dir.canonicalize().unwrap_or_else(|_| data_dir.to_path_buf());
        c.exclude_paths.push(data_dir);
        c
    }
}

/// The allowed range of a number in the configuration (both ends included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NumberRange {
    /// The smallest allowed.
    pub min: u64,
    /// The largest allowed.
    pub max: u64,
}

impl NumberRange {
    /// Whether `value` is in the range.
    pub fn contains(self, value: u64) -> bool {
        (self.min..=self.max).contains(&value)
    }
}

/// Every number of the configuration with its allowed range: what `edr
/// config check` and the agent at start (the same [`AgentConfig::parse`])
/// enforce, and what the README's configuration table documents. The
/// bounds keep the agent alive on a 1 GiB host: the collectors' queue is
/// allocated (and touched) up front, one 240-byte slot per event
/// (`size_of::<Event>()` is 232), so 262144 slots are 60 MiB; each plugin
/// holds up to `runtime.plugin_queue` batches; and a zero in a count or
/// deadline would silently turn a feature off. The output
/// sections (`output.syslog`, `.webhook`, `.nats`) check their own.
/// `plugins.limits.<plugin>.<key>` takes the range of `runtime.<key>`.
pub const NUMBER_RANGES: &[(&str, NumberRange)] = &[
    ("runtime.batch_size", NumberRange { min: 1, max: 65_536 }),
    ("runtime.batch_timeout_ms", NumberRange { min: 1, max: 60_000 }),
    ("runtime.call_deadline_ms", NumberRange { min: 1, max: 60_000 }),
    ("runtime.init_deadline_ms", NumberRange { min: 1, max: 600_000 }),
    ("runtime.memory_mb", NumberRange { min: 1, max: 1024 }),
    ("runtime.max_findings_per_batch", NumberRange { min: 1, max: 65_536 }),
    ("runtime.max_strikes", NumberRange { min: 1, max: 1000 }),
    ("runtime.strike_window_secs", NumberRange { min: 1, max: 604_800 }),
    ("runtime.plugin_queue", NumberRange { min: 1, max: 4096 }),
    ("collect.queue", NumberRange { min: 1, max: 262_144 }),
    ("store.max_age_days", NumberRange { min: 0, max: 36_500 }),
    ("store.max_size_mb", NumberRange { min: 0, max: 16_777_216 }),
    ("packs.poll_interval_secs", NumberRange { min: 1, max: 604_800 }),
    ("packs.keep_versions", NumberRange { min: 1, max: 100 }),
    ("packs.max_call_deadline_ms", NumberRange { min: 1, max: 60_000 }),
    ("packs.max_memory_mb", NumberRange { min: 1, max: 1024 }),
    ("incidents.window_secs", NumberRange { min: 1, max: 604_800 }),
    ("fleet.isolation_fallback_secs", NumberRange { min: 0, max: 30 * 86_400 }),
    ("incidents.depth", NumberRange { min: 0, max: 16 }),
];

/// The allowed range of a (dotted) number key, if it has one.
pub fn number_range(key: &str) -> Option<NumberRange> {
    let key = match key.strip_prefix("plugins.limits.").and_then(|rest| rest.rsplit_once('.')) {
        Some((_, field)) => format!("runtime.{field}"),
        None => key.to_string(),
    };
    NUMBER_RANGES.iter().find(|(k, _)| *k == key).map(|(_, r)| *r)
}

/// A configuration problem, located.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // the fields: the file, the 1-based line, the dotted key, what is wrong
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// Not TOML, or not the configuration's shape.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, line: Option<usize>, message: String },
    /// A value the types allow but the agent does not.
    #[error("{path}{}: `{key}`: {message}", line.map(|l| format!(": line {l}")).unwrap_or_default())]
    Invalid { path: PathBuf, line: Option<usize>, key: String, message: String },
}

impl AgentConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let cfg: AgentConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_path_buf(),
            line: e.span().map(|s| line_of(text, s.start)),
            message: describe_toml_error(&e, text),
        })?;
        cfg.validate(origin, text)?;
        Ok(cfg)
    }

    /// Checks what the types cannot: ranges, addresses, keys, grants. Each
    /// error names the key and, when it is in `text`, its line.
    fn validate(&self, origin: &Path, text: &str) -> Result<(), ConfigError> {
        let bad =
            |key: &str, message: String| Err(ConfigError::Invalid { path: origin.to_path_buf(), line: key_line(text, key), key: key.to_string(), message });
        for (key, value) in self.numbers() {
            if let Some(range) = number_range(&key) {
                if !range.contains(value) {
                    return bad(&key, format!("{value} is out of range {}..={}", range.min, range.max));
                }
            }
        }
        for (i, k) in self.trust.keys.iter().enumerate() {
            match (&k.public_key, &k.public_key_file) {
                (Some(_), None) | (None, Some(_)) => {}
                _ => return bad("trust.keys", format!("entry {} (`{}`): give exactly one of public_key or public_key_file", i + 1, k.name)),
            }
            if let Some(key) = &k.public_key {
                if let Err(e) = edr_pack::PublicKey::from_base64(key) {
                    return bad("trust.keys", format!("`{}`: {e}", k.name));
                }
            }
        }
        if let Some(url) = &self.packs.update_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return bad("packs.update_url", format!("`{url}` is not an http:// or https:// URL"));
            }
        }
        for (plugin, caps) in &self.plugins.capabilities {
            for c in caps {
                if edr_runtime::Capability::parse(c).is_none() {
                    return bad(&format!("plugins.capabilities.{plugin}"), format!("unknown capability `{c}`; expected log, clock, state, process or respond"));
                }
            }
        }
        for (plugin, table) in &self.plugins.settings {
            for (key, value) in table {
                if setting_string(value).is_none() {
                    return bad(&format!("plugins.settings.{plugin}.{key}"), "use a string, number, boolean or array of those".into());
                }
            }
        }
        if let Err(e) = self.output.remote().validate(&self.data_dir) {
            return match e {
                edr_output::OutputError::Config { key, message } => bad(&format!("output.{key}"), message),
                other => bad("output", other.to_string()),
            };
        }
        if let Err(e) = edr_fleet_link::policy::CommandPolicy::new(&self.fleet.refuse) {
            return bad("fleet.refuse", e);
        }
        if let Some(listen) = &self.metrics.listen {
            if let Err(e) = self.metrics.address() {
                return bad("metrics.listen", format!("`{listen}`: {e}"));
            }
        }
        Ok(())
    }

    /// Every range-checked number with its dotted key (see [`NUMBER_RANGES`]).
    fn numbers(&self) -> Vec<(String, u64)> {
        let (r, p) = (&self.runtime, &self.packs);
        let n = |k: &str, v: u64| (k.to_string(), v);
        let mut out = vec![
            n("runtime.batch_size", r.batch_size as u64),
            n("runtime.batch_timeout_ms", r.batch_timeout_ms),
            n("runtime.call_deadline_ms", r.call_deadline_ms),
            n("runtime.init_deadline_ms", r.init_deadline_ms),
            n("runtime.memory_mb", r.memory_mb as u64),
            n("runtime.max_findings_per_batch", r.max_findings_per_batch as u64),
            n("runtime.max_strikes", r.max_strikes as u64),
            n("runtime.strike_window_secs", r.strike_window_secs),
            n("runtime.plugin_queue", r.plugin_queue as u64),
            n("collect.queue", self.collect.queue as u64),
            n("store.max_age_days", self.store.max_age_days),
            n("store.max_size_mb", self.store.max_size_mb),
            n("packs.poll_interval_secs", p.poll_interval_secs),
            n("packs.keep_versions", p.keep_versions as u64),
            n("packs.max_call_deadline_ms", p.max_call_deadline_ms),
            n("packs.max_memory_mb", p.max_memory_mb as u64),
            n("incidents.window_secs", self.incidents.window_secs),
            n("fleet.isolation_fallback_secs", self.fleet.isolation_fallback_secs),
            n("incidents.depth", self.incidents.depth),
        ];
        for (plugin, l) in &self.plugins.limits {
            let k = |f: &str| format!("plugins.limits.{plugin}.{f}");
            out.extend(l.call_deadline_ms.map(|v| (k("call_deadline_ms"), v)));
            out.extend(l.init_deadline_ms.map(|v| (k("init_deadline_ms"), v)));
            out.extend(l.memory_mb.map(|v| (k("memory_mb"), v as u64)));
            out.extend(l.max_findings_per_batch.map(|v| (k("max_findings_per_batch"), v as u64)));
        }
        out
    }

    /// Valid settings that weaken the agent's protection, for `edr config
    /// check` and the agent's log at start: an isolation management
    /// endpoint that covers most of the internet (isolation would isolate
    /// nothing), and an alerts file outside the data dir (the agent appends
    /// to whatever is there, with the data dir's protection not covering it).
    pub fn exposure_warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        for m in self.respond.management.iter().filter(|m| m.prefix < CATCH_ALL_PREFIX) {
            w.push(format!("respond.management `{m}` covers most of the internet (prefix /{} is shorter than /{CATCH_ALL_PREFIX}): isolating the host would leave it reachable from, and able to reach, almost anywhere; list the management hosts or subnets themselves", m.prefix));
        }
        if let Some(file) = self.data_path(&self.output.alerts_file) {
            let (file, dir) = (lexical_absolute(&file), lexical_absolute(&self.data_dir));
            if !file.starts_with(&dir) {
                w.push(format!("output.alerts_file {} is outside data_dir {}: the agent (root) appends alerts to it without the data dir's checks; keep it under data_dir, or make sure only root can write its directory", file.display(), dir.display()));
            }
        }
        w
    }

    /// The response engine's configuration: `[respond]`, with the quarantine
    /// and evidence stores and the block list under `data_dir` by default.
    pub fn respond_config(&self) -> edr_respond::ResponseConfig {
        self.respond.clone().under_data_dir(&self.data_dir)
    }

    /// `path` resolved against `data_dir` when relative; `None` when empty.
    pub fn data_path(&self, path: &Path) -> Option<PathBuf> {
        if path.as_os_str().is_empty() {
            None
        } else if path.is_absolute() {
            Some(path.to_path_buf())
        } else {
            Some(self.data_dir.join(path))
        }
    }

    /// The capabilities granted to one plugin.
    pub fn plugin_grants(&self, plugin: &str) -> edr_runtime::Grants {
        match self.plugins.capabilities.get(plugin) {
            Some(caps) => edr_runtime::Grants::only(caps.iter().filter_map(|c| edr_runtime::Capability::parse(c))),
            None => edr_runtime::Grants::detection_default(),
        }
    }

    /// Whether `[respond.packs."<pack>"]` grants the pack any response action
    /// (which grants its plugins the `respond` capability).
    pub fn respond_grants_pack(&self, pack: &str) -> bool {
        self.respond.packs.get(pack).is_some_and(|g| !g.actions.is_empty())
    }

    /// The settings for one plugin as the contract's key/value strings.
    pub fn plugin_settings(&self, plugin: &str) -> Vec<(String, String)> {
        self.plugins.settings.get(plugin).map(|t| t.iter().filter_map(|(k, v)| Some((k.clone(), setting_string(v)?))).collect()).unwrap_or_default()
    }
}

/// A management endpoint with a prefix shorter than this is a catch-all.
const CATCH_ALL_PREFIX: u8 = 8;

/// `path` made absolute against the current directory, with `.` and `..`
/// resolved by their names (no file system access: the file may not exist).
fn lexical_absolute(path: &Path) -> PathBuf {
    use std::path::Component;
    let joined = if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir().unwrap_or_default().join(path) };
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// A setting value as a string: arrays become comma-separated lists.
fn setting_string(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Array(items) => items.iter().map(setting_string).collect::<Option<Vec<_>>>().map(|v| v.join(",")),
        _ => None,
    }
}

/// toml's message, prefixed with `line N` when it carries a span.
fn describe_toml_error(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            let line = line_of(text, span.start);
            // Name the key with its table when the span is a key (unknown field).
            let word = text.get(span.clone()).unwrap_or("");
            let is_key = !word.is_empty()
                && word.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                && text[span.end.min(text.len())..].trim_start().starts_with('=');
            if is_key {
                let table = text[..span.start]
                    .lines()
                    .rev()
                    .map(str::trim)
                    .find(|l| l.starts_with('['))
                    .map(|h| h.trim_matches(|c| c == '[' || c == ']').trim().to_string());
                let key = match table {
                    Some(t) if !t.is_empty() => format!("{t}.{word}"),
                    _ => word.to_string(),
                };
                format!("line {line}: `{key}`: {msg}")
            } else {
                format!("line {line}: {msg}")
            }
        }
        None => msg,
    }
}

/// The line (1-based) of a dotted key in the config text: the deepest part
/// of the path that is present (`plugins.limits.x.memory_mb` falls back to
/// `[plugins.limits.x]` when the key itself is absent).
fn key_line(text: &str, key: &str) -> Option<usize> {
    let root = toml::de::DeTable::parse(text).ok()?;
    let mut table = root.get_ref();
    let mut found = None;
    let mut parts = key.split('.').peekable();
    while let Some(part) = parts.next() {
        let Some((k, v)) = table.get_key_value(part) else { break };
        found = Some(k.span().start);
        match v.get_ref() {
            toml::de::DeValue::Table(t) if parts.peek().is_some() => table = t,
            _ => break,
        }
    }
    found.map(|at| line_of(text, at))
}

/// The 1-based line of a byte offset.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn empty_file_is_the_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.runtime.batch_size, 256);
        assert!(c.plugins.builtin);
        assert_eq!(c.data_path(&c.output.alerts_file), Some(PathBuf::from("./edr-data/alerts.jsonl")));
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../../../../examples/edr.toml");
        let c = parse(text).unwrap();
        assert_eq!(c.plugin_settings("writable-exec"), vec![("allow".to_string(), "/opt/ci/tmp/**".to_string())]);
    }

    #[test]
    fn errors_name_line_and_key() {
        let e = parse("[runtime]\nbatch_size = 0\n").unwrap_err().to_string();
        assert_eq!(e, "test.toml: line 2: `runtime.batch_size`: 0 is out of range 1..=65536");
        let e = parse("[runtime]\n\nbatch_sise = 5\n").unwrap_err().to_string();
        assert!(e.starts_with("test.toml: line 3: `runtime.batch_sise`: unknown field `batch_sise`"), "{e}");
        let e = parse("[runtime]\nbatch_size = \"big\"\n").unwrap_err().to_string();
        assert!(e.starts_with("test.toml: line 2: invalid type"), "{e}");
        let e = parse("data_dir = [").unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn the_configs_that_crashed_the_agent_are_refused_with_their_range() {
        // Issue 14: an allocation abort, an OOM kill, and no alerts at all.
        let e = parse("[collect]\nqueue = 99999999999\n").unwrap_err().to_string();
        assert_eq!(e, "test.toml: line 2: `collect.queue`: 99999999999 is out of range 1..=262144");
        let e = parse("[runtime]\nplugin_queue = 100000000\n").unwrap_err().to_string();
        assert_eq!(e, "test.toml: line 2: `runtime.plugin_queue`: 100000000 is out of range 1..=4096");
        let e = parse("[runtime]\nbatch_size = 8\nmax_findings_per_batch = 0\n").unwrap_err().to_string();
        assert_eq!(e, "test.toml: line 3: `runtime.max_findings_per_batch`: 0 is out of range 1..=65536");
        let e = parse("[plugins.limits.x]\nmax_findings_per_batch = 0\n").unwrap_err().to_string();
        assert_eq!(e, "test.toml: line 2: `plugins.limits.x.max_findings_per_batch`: 0 is out of range 1..=65536");
        let e = parse("[store]\nmax_size_mb = 99999999999999\n").unwrap_err().to_string();
        assert!(e.contains("`store.max_size_mb`: 99999999999999 is out of range 0..=16777216"), "{e}");
    }

    #[test]
    fn every_ranged_number_is_checked_and_the_defaults_are_in_range() {
        let c = AgentConfig::default();
        let checked: Vec<String> = c
            .numbers()
            .into_iter()
            .map(|(k, v)| {
                assert!(number_range(&k).unwrap().contains(v), "default {k} = {v} out of its range");
                k
            })
            .collect();
        for (key, range) in NUMBER_RANGES {
            assert!(checked.iter().any(|k| k == key), "{key} has a range but is not checked");
            assert!(range.min <= range.max);
            // The ends are accepted, one beyond is refused.
            let section = key.split('.').next().unwrap();
            let field = key.split('.').nth(1).unwrap();
            assert!(parse(&format!("[{section}]\n{field} = {}\n", range.max)).is_ok(), "{key} = max");
            let e = parse(&format!("[{section}]\n{field} = {}\n", range.max + 1)).unwrap_err().to_string();
            assert!(e.contains(&format!("`{key}`: {} is out of range {}..={}", range.max + 1, range.min, range.max)), "{e}");
        }
    }

    #[test]
    fn catch_all_management_and_an_alerts_file_outside_the_data_dir_warn() {
        let c = parse("data_dir = \"/var/lib/edr\"\n[respond]\nmanagement = [\"0.0.0.0/0\", \"::/0\", \"10.0.0.0/4\", \"10.1.2.3:443\"]\n").unwrap();
        let w = c.exposure_warnings();
        assert_eq!(w.iter().filter(|w| w.contains("covers most of the internet")).count(), 3, "{w:?}");
        assert!(w.iter().any(|w| w.contains("`0.0.0.0/0`")), "{w:?}");
        assert!(w.iter().any(|w| w.contains("`::/0`")), "{w:?}");
        assert!(!w.iter().any(|w| w.contains("10.1.2.3")), "{w:?}");
        assert!(!w.iter().any(|w| w.contains("alerts_file")), "the default alerts file is inside: {w:?}");
        for outside in ["/root/secret", "../../etc/alerts.jsonl"] {
            let c = parse(&format!("data_dir = \"/var/lib/edr\"\n[output]\nalerts_file = {outside:?}\n")).unwrap();
            let w = c.exposure_warnings();
            assert!(w.iter().any(|w| w.contains("output.alerts_file") && w.contains("outside data_dir /var/lib/edr")), "{outside}: {w:?}");
        }
        let c = parse("data_dir = \"/var/lib/edr\"\n[output]\nalerts_file = \"/var/lib/edr/a/alerts.jsonl\"\n").unwrap();
        assert!(c.exposure_warnings().is_empty());
    }

    #[test]
    fn per_plugin_limits_and_grants() {
        let c = parse("[plugins.limits.x]\ncall_deadline_ms = 10\n[plugins.capabilities]\nx = [\"log\"]\n").unwrap();
        assert_eq!(c.plugins.limits["x"].call_deadline_ms, Some(10));
        assert!(c.plugin_grants("x").allows(edr_runtime::Capability::Log));
        assert!(!c.plugin_grants("x").allows(edr_runtime::Capability::State));
        assert!(c.plugin_grants("y").allows(edr_runtime::Capability::State));
        let e = parse("[plugins.capabilities]\nx = [\"sockets\"]\n").unwrap_err().to_string();
        assert!(e.contains("unknown capability `sockets`"), "{e}");
        let e = parse("[plugins.limits.x]\ncall_deadline = 10\n").unwrap_err().to_string();
        assert!(e.contains("unknown field `call_deadline`"), "{e}");
    }

    #[test]
    fn modes_and_the_respond_section_are_typed_and_errors_name_the_line() {
        let c = parse("[collect]\nsource = \"stdin\"\nprocess = \"poll\"\nfile = \"off\"\n").unwrap();
        assert_eq!(c.collect.source, EventSource::Stdin);
        assert_eq!(c.collect.process, edr_collect::ProcessMode::Poll);
        assert_eq!(c.collect.file, edr_collect::FileMode::Off);
        assert_eq!(parse("[collect]\nsource = \"/tmp/e.jsonl\"\n").unwrap().collect.source, EventSource::File("/tmp/e.jsonl".into()));
        assert_eq!(serde_json::to_value(EventSource::Live).unwrap(), "live");
        assert_eq!(parse("[collect]\nprocess = \"ebpf\"\n").unwrap().collect.process, edr_collect::ProcessMode::Ebpf);
        let e = parse("[collect]\n\nprocess = \"kprobe\"\n").unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("unknown ProcessMode `kprobe`; expected one of: auto, ebpf, netlink, poll, off"), "{e}");
        assert!(parse("[collect]\nsource = \"\"\n").unwrap_err().to_string().contains("empty"));
        // [respond]: the stores default under data_dir, what is given stays.
        let c = parse("data_dir = \"/var/lib/edr\"\n[respond]\nquarantine_dir = \"/q\"\nmanagement = [\"192.0.2.1/32\"]\n").unwrap();
        let rc = c.respond_config();
        assert_eq!(rc.quarantine_dir, PathBuf::from("/q"));
        assert_eq!(rc.evidence_dir, PathBuf::from("/var/lib/edr/evidence"));
        assert_eq!(rc.blocklist_file, Some(PathBuf::from("/var/lib/edr/blocklist.json")));
        assert_eq!(rc.management.len(), 1);
        let e = parse("[respond]\nallow_dns = true\nisolate_harder = true\n").unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("unknown field `isolate_harder`"), "{e}");
        let e = parse("[respond]\nblock_deadline_ms = 5\n").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("out of range"), "{e}");
        let e = parse("[respond]\ndata_dir = \"/x\"\n").unwrap_err().to_string();
        assert!(e.contains("unknown field `data_dir`"), "set by the agent, not the file: {e}");
    }

    #[test]
    fn settings_become_strings() {
        let c = parse("[plugins.settings.lineage]\nextra_services = [\"a\", \"b\"]\nstrict = true\n").unwrap();
        assert_eq!(c.plugin_settings("lineage"), vec![("extra_services".into(), "a,b".into()), ("strict".into(), "true".into())]);
        assert!(parse("[plugins.settings.lineage]\nx = { y = 1 }\n").is_err());
    }
}
