//! The pack manifest, `pack.toml`: its types, strict parsing and validation.
//! The rules are in the crate documentation (FORMAT.md).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use edr_event::EventKind;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The manifest's file name, at the root of every pack.
pub const MANIFEST_FILE: &str = "pack.toml";

/// Most plugins one pack may hold.
pub const MAX_PLUGINS: usize = 64;

/// Largest `pack.toml` accepted (1 MiB; a real manifest is a few KiB): a
/// bigger one is refused before it is read or parsed.
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

/// A host capability a plugin may import (one WIT interface each), shared
/// with the runtime that enforces it.
pub use edr_event::Capability;

/// A kind of response action a plugin may request (the names of
/// `edr_event::Action`'s variants).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActionKind {
    /// `kill-process`
    KillProcess,
    /// `suspend-process`
    SuspendProcess,
    /// `resume-process`
    ResumeProcess,
    /// `quarantine-file`
    QuarantineFile,
    /// `delete-file`
    DeleteFile,
    /// `fetch-file`
    FetchFile,
    /// `block-exec`
    BlockExec,
    /// `isolate-host`
    IsolateHost,
}

impl ActionKind {
    /// The name used in manifests, equal to `edr_event::Action::name()`.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::KillProcess => "kill-process",
            ActionKind::SuspendProcess => "suspend-process",
            ActionKind::ResumeProcess => "resume-process",
            ActionKind::QuarantineFile => "quarantine-file",
            ActionKind::DeleteFile => "delete-file",
            ActionKind::FetchFile => "fetch-file",
            ActionKind::BlockExec => "block-exec",
            ActionKind::IsolateHost => "isolate-host",
        }
    }

    /// The kind of a concrete action request.
    pub fn of(action: &edr_event::Action) -> ActionKind {
        use edr_event::Action as A;
        match action {
            A::KillProcess(_) => ActionKind::KillProcess,
            A::SuspendProcess(_) => ActionKind::SuspendProcess,
            A::ResumeProcess(_) => ActionKind::ResumeProcess,
            A::QuarantineFile(_) => ActionKind::QuarantineFile,
            A::DeleteFile(_) => ActionKind::DeleteFile,
            A::FetchFile(_) => ActionKind::FetchFile,
            A::BlockExec(_) => ActionKind::BlockExec,
            A::IsolateHost => ActionKind::IsolateHost,
        }
    }
}

impl fmt::Display for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An RFC 3339 date-time with an offset (`2027-01-01T00:00:00Z`,
/// `2027-01-01T02:00:00+02:00`), as written in a manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DateTime(OffsetDateTime);

impl DateTime {
    /// The instant as a `SystemTime`.
    pub fn to_system_time(self) -> SystemTime {
        self.0.into()
    }

    /// The instant of a `SystemTime`.
    pub fn from_system_time(t: SystemTime) -> DateTime {
        DateTime(OffsetDateTime::from(t))
    }
}

impl FromStr for DateTime {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OffsetDateTime::parse(s, &Rfc3339).map(DateTime).map_err(|e| format!("`{s}` is not an RFC 3339 date-time such as 2027-01-01T00:00:00Z: {e}"))
    }
}

impl fmt::Display for DateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.format(&Rfc3339) {
            Ok(s) => f.write_str(&s),
            Err(_) => write!(f, "{}", self.0),
        }
    }
}

impl Serialize for DateTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DateTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = DateTime;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an RFC 3339 date-time string in quotes, such as \"2027-01-01T00:00:00Z\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<DateTime, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// The manifest, `pack.toml`. Field by field rules are in FORMAT.md.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The pack's id, reverse-DNS style (`com.example.linux-core`).
    pub id: String,
    /// The pack's version (no build metadata).
    pub version: semver::Version,
    /// The oldest agent version that can run this pack.
    pub min_agent_version: semver::Version,
    /// The plugin contract version, `MAJOR.MINOR` (e.g. `0.1`).
    pub contract: String,
    /// Who publishes the pack (display name).
    pub publisher: String,
    /// What the pack is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The pack is refused before this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime>,
    /// The pack is refused at and after this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<DateTime>,
    /// Data files (`[[data]]`), handed to the plugins that list them.
    #[serde(default, rename = "data", skip_serializing_if = "Vec::is_empty")]
    pub data: Vec<DataFile>,
    /// The plugins (`[[plugin]]`).
    #[serde(default, rename = "plugin")]
    pub plugins: Vec<PluginManifest>,
}

/// A `[[data]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataFile {
    /// Path inside the pack.
    pub path: String,
    /// Lower-case hex SHA-256 of the file (empty only in a builder template).
    #[serde(default)]
    pub sha256: String,
}

/// A `[[plugin]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginManifest {
    /// The plugin's name, unique in the pack.
    pub name: String,
    /// Path of the wasm component inside the pack.
    pub file: String,
    /// Lower-case hex SHA-256 of the component (empty only in a builder template).
    #[serde(default)]
    pub sha256: String,
    /// Event kinds the plugin receives.
    pub subscriptions: Vec<EventKind>,
    /// Host capabilities requested.
    #[serde(default)]
    pub capabilities: Vec<Capability>,
    /// Response actions requested.
    #[serde(default)]
    pub actions: Vec<ActionKind>,
    /// Paths of the `[[data]]` files this plugin gets.
    #[serde(default)]
    pub data: Vec<String>,
    /// Resource limit overrides requested.
    #[serde(default, skip_serializing_if = "Limits::is_empty")]
    pub limits: Limits,
    /// Default settings (the plugin's config), string values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, String>,
}

/// Per-plugin resource limit overrides; `None` keeps the agent's default.
/// They are requests: the agent's policy may lower them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Deadline of one plugin call, in milliseconds (1 to 60000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_deadline_ms: Option<u64>,
    /// Linear memory cap, in MiB (1 to 4096).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// Findings kept per batch (1 to 1000000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_findings_per_batch: Option<u32>,
}

impl Limits {
    /// True when no override is set.
    pub fn is_empty(&self) -> bool {
        self.call_deadline_ms.is_none() && self.memory_mb.is_none() && self.max_findings_per_batch.is_none()
    }
}

/// Whether empty `sha256` fields are allowed (a builder template) or not (a
/// pack's final manifest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Template,
    Final,
}

impl Manifest {
    /// Parses and validates a final manifest (every `sha256` filled in).
    /// Errors name the line (for syntax, type and unknown-key errors) or the
    /// entry (for rule violations).
    pub fn from_toml_str(text: &str) -> Result<Manifest, String> {
        Self::parse(text, Mode::Final)
    }

    pub(crate) fn parse(text: &str, mode: Mode) -> Result<Manifest, String> {
        if text.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(format!("{MANIFEST_FILE} is {} bytes, more than the limit of {MAX_MANIFEST_BYTES} bytes", text.len()));
        }
        let mut manifest: Manifest = toml::from_str(text).map_err(|e| describe_toml_error(text, &e))?;
        manifest.validate(mode)?;
        Ok(manifest)
    }

    /// The manifest as TOML, in a canonical layout (what the builder writes).
    pub fn to_toml(&self) -> String {
        // Every field is a string, a number, a list or a table of those, so
        // serialisation cannot fail.
        toml::to_string(self).unwrap_or_else(|e| unreachable!("manifest serialisation failed: {e}"))
    }

    /// The plugin named `name`.
    pub fn plugin(&self, name: &str) -> Option<&PluginManifest> {
        self.plugins.iter().find(|p| p.name == name)
    }

    /// Every file the manifest names (plugins' components and data files),
    /// with its pinned hash.
    pub fn files(&self) -> impl Iterator<Item = (&str, &str)> {
        self.plugins.iter().map(|p| (p.file.as_str(), p.sha256.as_str())).chain(self.data.iter().map(|d| (d.path.as_str(), d.sha256.as_str())))
    }

    /// Checks every rule of FORMAT.md, normalising hashes to lower case.
    pub(crate) fn validate(&mut self, mode: Mode) -> Result<(), String> {
        validate_id(&self.id).map_err(|why| format!("id `{}`: {why}", self.id))?;
        if !self.version.build.is_empty() {
            return Err(format!(
                "version `{}`: build metadata (`+{}`) is not allowed because it does not order versions; bump the version instead",
                self.version, self.version.build
            ));
        }
        validate_contract(&self.contract).map_err(|why| format!("contract `{}`: {why}", self.contract))?;
        validate_text(&self.publisher, 256, false).map_err(|why| format!("publisher: {why}"))?;
        if let Some(d) = &self.description {
            validate_text(d, 4096, true).map_err(|why| format!("description: {why}"))?;
        }
        if let (Some(nb), Some(ex)) = (self.not_before, self.expires) {
            if ex <= nb {
                return Err(format!("expires ({ex}) must be later than not_before ({nb})"));
            }
        }

        let mut paths = BTreeSet::new();
        let mut data_paths = BTreeSet::new();
        for (i, d) in self.data.iter_mut().enumerate() {
            let at = format!("data[{i}] `{}`", d.path);
            validate_pack_path(&d.path).map_err(|why| format!("{at}: path: {why}"))?;
            if !paths.insert(d.path.clone()) {
                return Err(format!("{at}: the path is declared twice"));
            }
            d.sha256 = check_hash(&d.sha256, mode).map_err(|why| format!("{at}: sha256: {why}"))?;
            data_paths.insert(d.path.clone());
        }

        if self.plugins.is_empty() {
            return Err("the pack declares no [[plugin]]".into());
        }
        if self.plugins.len() > MAX_PLUGINS {
            return Err(format!("the pack declares {} plugins, at most {MAX_PLUGINS} are allowed", self.plugins.len()));
        }
        let mut names = BTreeSet::new();
        let mut used_data = BTreeSet::new();
        for (i, p) in self.plugins.iter_mut().enumerate() {
            let at = format!("plugin[{i}] `{}`", p.name);
            validate_plugin_name(&p.name).map_err(|why| format!("{at}: name: {why}"))?;
            if !names.insert(p.name.clone()) {
                return Err(format!("{at}: two plugins are named `{}`", p.name));
            }
            validate_pack_path(&p.file).map_err(|why| format!("{at}: file `{}`: {why}", p.file))?;
            if !paths.insert(p.file.clone()) {
                return Err(format!("{at}: file `{}` is already named by another plugin or data entry", p.file));
            }
            p.sha256 = check_hash(&p.sha256, mode).map_err(|why| format!("{at}: sha256: {why}"))?;
            if p.subscriptions.is_empty() {
                return Err(format!("{at}: subscriptions is empty; a plugin must subscribe to at least one event kind"));
            }
            no_duplicates(&p.subscriptions).map_err(|d| format!("{at}: subscriptions lists `{d}` twice"))?;
            no_duplicates(&p.capabilities).map_err(|d| format!("{at}: capabilities lists `{d}` twice"))?;
            no_duplicates(&p.actions).map_err(|d| format!("{at}: actions lists `{d}` twice"))?;
            if !p.actions.is_empty() && !p.capabilities.contains(&Capability::Respond) {
                return Err(format!("{at}: actions are requested but the `respond` capability is not; add \"respond\" to capabilities"));
            }
            no_duplicates(&p.data).map_err(|d| format!("{at}: data lists `{d}` twice"))?;
            for d in &p.data {
                if !data_paths.contains(d) {
                    return Err(format!("{at}: data `{d}` is not declared in a [[data]] entry"));
                }
                used_data.insert(d.clone());
            }
            validate_limits(&p.limits).map_err(|why| format!("{at}: limits: {why}"))?;
            for (k, v) in &p.settings {
                if k.is_empty() || k.len() > 128 {
                    return Err(format!("{at}: settings key `{k}` must be 1 to 128 characters"));
                }
                if v.len() > 65536 {
                    return Err(format!("{at}: settings value of `{k}` is {} bytes, at most 65536 are allowed", v.len()));
                }
            }
        }
        if let Some(unused) = data_paths.difference(&used_data).next() {
            return Err(format!("data `{unused}` is declared but no plugin lists it in its `data`; remove it or add it to a plugin"));
        }
        Ok(())
    }
}

fn no_duplicates<T: Ord + fmt::Debug + Clone + Serialize>(items: &[T]) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for item in items {
        if !seen.insert(item.clone()) {
            // Serialise to get the manifest spelling (kebab-case) of enums.
            let name = toml::Value::try_from(item).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_else(|| format!("{item:?}"));
            return Err(name);
        }
    }
    Ok(())
}

fn check_hash(h: &str, mode: Mode) -> Result<String, String> {
    if h.is_empty() {
        return match mode {
            Mode::Template => Ok(String::new()),
            Mode::Final => Err("missing; every file must be pinned by its SHA-256 (the builder fills it in)".into()),
        };
    }
    if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("`{h}` is not 64 hex digits"));
    }
    Ok(h.to_ascii_lowercase())
}

fn validate_id(id: &str) -> Result<(), &'static str> {
    if id.len() < 3 || id.len() > 128 {
        return Err("must be 3 to 128 characters");
    }
    let labels: Vec<&str> = id.split('.').collect();
    if labels.len() < 2 {
        return Err("must have at least two labels separated by `.`, reverse-DNS style (com.example.pack)");
    }
    for label in &labels {
        if label.is_empty() || label.len() > 63 {
            return Err("each `.`-separated label must be 1 to 63 characters");
        }
        if !label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return Err("labels may contain only a-z, 0-9 and `-`");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("labels must not start or end with `-`");
        }
    }
    if !labels[0].as_bytes()[0].is_ascii_lowercase() {
        return Err("the first label must start with a letter");
    }
    Ok(())
}

fn validate_contract(c: &str) -> Result<(), &'static str> {
    let mut parts = c.split('.');
    let ok = |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    if ok(parts.next()) && ok(parts.next()) && parts.next().is_none() {
        Ok(())
    } else {
        Err("must be MAJOR.MINOR, e.g. \"0.1\"")
    }
}

fn validate_text(s: &str, max: usize, multiline: bool) -> Result<(), String> {
    if s.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if s.chars().count() > max {
        return Err(format!("at most {max} characters"));
    }
    if s.chars().any(|c| c.is_control() && !(multiline && (c == '\n' || c == '\t'))) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

fn validate_plugin_name(n: &str) -> Result<(), &'static str> {
    if n.is_empty() || n.len() > 64 {
        return Err("must be 1 to 64 characters");
    }
    if !n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_') {
        return Err("may contain only a-z, 0-9, `-` and `_`");
    }
    if !n.as_bytes()[0].is_ascii_alphanumeric() {
        return Err("must start with a letter or digit");
    }
    Ok(())
}

/// Checks a path named by a manifest (see "Pack paths" in FORMAT.md).
pub(crate) fn validate_pack_path(p: &str) -> Result<(), &'static str> {
    if p.is_empty() || p.len() > 255 {
        return Err("must be 1 to 255 bytes");
    }
    if p.starts_with('/') {
        return Err("must be relative (no leading `/`)");
    }
    for component in p.split('/') {
        if component.is_empty() {
            return Err("must not contain empty components (`//` or a trailing `/`)");
        }
        if component == "." || component == ".." {
            return Err("must not contain `.` or `..` components");
        }
        if !component.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+')) {
            return Err("components may contain only A-Z, a-z, 0-9, `.`, `_`, `-` and `+`");
        }
    }
    if p == MANIFEST_FILE {
        return Err("`pack.toml` is reserved for the manifest");
    }
    Ok(())
}

fn validate_limits(l: &Limits) -> Result<(), String> {
    fn range(name: &str, v: Option<u64>, max: u64) -> Result<(), String> {
        match v {
            Some(v) if v == 0 || v > max => Err(format!("{name} = {v} is out of range 1..={max}")),
            _ => Ok(()),
        }
    }
    range("call_deadline_ms", l.call_deadline_ms, 60_000)?;
    range("memory_mb", l.memory_mb, 4096)?;
    range("max_findings_per_batch", l.max_findings_per_batch.map(u64::from), 1_000_000)
}

/// Turns a TOML error into "line N: message" (or "line N, key `k`: ...").
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            let line = text.get(..span.start).map_or(1, |before| before.matches('\n').count() + 1);
            let snippet = text.get(span.clone()).map(str::trim).filter(|s| !s.is_empty() && s.len() <= 60);
            match snippet {
                Some(s) => format!("line {line}, at `{s}`: {message}"),
                None => format!("line {line}: {message}"),
            }
        }
        None => message,
    }
}
