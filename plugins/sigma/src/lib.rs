//! Sigma rules on `edr` events.
//!
//! The `sigma` plugin evaluates [Sigma](https://sigmahq.io) detection rules
//! (the Linux taxonomy, Sysmon for Linux field names) on process execs, file
//! events and network connections, with the `rsigma` engine.
//!
//! # Rules
//!
//! Rules come from the plugin's configuration: every data file of the pack
//! (`config.files`) whose name ends in `.yml` or `.yaml` is a rule file,
//! possibly with several YAML documents (`---`, `action: global`/`repeat`).
//! The rules of [`BUILTIN_RULES`] (this crate's `rules/` directory: Linux
//! techniques SigmaHQ does not cover) are loaded after them unless the
//! setting `builtin_rules` is `false`; a pack file with the id of a built-in
//! rule therefore replaces it.
//!
//! A rule that does not load (bad YAML, a logsource we have no events for, an
//! unknown modifier, a bad regex, a duplicate id, ...) is logged with the
//! reason and counted ([`Sigma::failed`]); the other rules still load. Init
//! fails only when no rule at all loaded. [`check_dir`] gives the same verdict
//! for a directory of rules without running the agent (`edr sigma check`).
//!
//! Settings:
//! * `categories`: comma-separated logsource categories to load (default:
//!   all of `process_creation`, `file_event`, `file_delete`, `file_access`,
//!   `network_connection`).
//! * `builtin_rules`: load [`BUILTIN_RULES`] (default `true`).
//! * `engine`: `compiled` (default: one multi-pattern literal prefilter per
//!   field in front of the engine, see [`edr_sigma_core::compiled`]) or
//!   `interpreted` (every candidate rule of `rsigma`'s own index evaluated
//!   one by one, as before). Both give the same findings; `interpreted` is
//!   kept as the reference for tests and `edr-bench sigma`.
//!
//! Only detection rules with `product: linux`, no `service` and one of the
//! categories above load. Correlation and filter (meta) rules do not.
//!
//! # Field mapping
//!
//! | category | Sigma field | our event |
//! |---|---|---|
//! | process_creation | `Image` | `exe` |
//! | | `CommandLine` | `argv` joined by single spaces |
//! | | `CurrentDirectory` | `cwd` |
//! | | `User` | `user` (the name; absent when unresolved) |
//! | | `ProcessId`, `ParentProcessId` | `pid`, `ppid` (integers) |
//! | | `ParentImage`, `ParentCommandLine` | `parent_exe`, `parent_argv` joined |
//! | | `UserId` (ours) | `uid` (integer) |
//! | file_event, file_delete, file_access | `TargetFilename` | `path` (the new path of a rename) |
//! | | `Image`, `ProcessId` | `exe`, `pid` of the acting process, where known |
//! | | `SourceFilename` (ours) | the old path of a rename |
//! | | `FileOperation` (ours) | `create`, `modify`, `rename`, `chmod`, `delete`, `read` |
//! | | `FileMode` (ours) | `st_mode & 07777` as 4 octal digits (`4755`), where known |
//! | | `SetuidBit`, `SetgidBit` (ours) | `'true'`/`'false'` from `st_mode`, where known |
//! | | `UserId` (ours) | `uid`, where known |
//! | network_connection | `Image`, `ProcessId` | `exe`, `pid`, where known |
//! | | `Initiated` | `'true'` for `connect`, `'false'` for `accept` |
//! | | `SourceIp`, `SourcePort` | the initiating side: local for `connect`, remote for `accept` |
//! | | `DestinationIp`, `DestinationPort` | the other side: remote for `connect`, local for `accept` |
//! | | `Protocol` | `tcp` or `udp` |
//! | | `SourceIsIpv6`, `DestinationIsIpv6` | `'true'` when the address has a `:` |
//! | | `UserId` (ours) | `uid`, where known |
//!
//! Never set (rules using them load, with a warning from [`check_dir`], but a
//! condition on them never matches): `OriginalFileName`, `Product`,
//! `Description`, `Company`, `FileVersion` (PE metadata), `LogonId`,
//! `LogonGuid`, `TerminalSessionId`, `IntegrityLevel`, `Hashes`,
//! `ProcessGuid`, `ParentProcessGuid`, `ParentUser`, `DestinationHostname`,
//! `SourceHostname` (connections carry addresses only), port names,
//! `CreationUtcTime`; and `User` on file and network events (only the uid is
//! known there: use `UserId`). See [`mapping::ABSENT_FIELDS`]. An empty string
//! in our event (an unknown cwd, say) is an absent field, so `Field: null`
//! matches it. Numbers are integers to the engine: `DestinationPort: 4444`
//! and `DestinationPort: '4444'` both match.
//!
//! ## Which events go to which category
//!
//! * `process_creation`: every process exec.
//! * `file_event` (Sysmon's "file created or overwritten", widened to what
//!   changes a file's content, name or permissions): `create`, `modify`
//!   (written), `rename` (the new path is `TargetFilename`) and `chmod` (so a
//!   file made setuid by `chmod u+s` is seen; rules that care can test
//!   `FileOperation`). `attrib` (owner, timestamps, extended attributes) goes
//!   nowhere.
//! * `file_delete`: `delete`.
//! * `file_access` (our own category; Sigma defines none for Linux):
//!   `read`, where the collector reports reads. Rules use `TargetFilename`
//!   and `Image` as for `file_event`.
//! * `network_connection`: `connect` and `accept`; `listen` goes nowhere
//!   (there is no peer).
//! * Process exits and logins: none.
//!
//! # Findings
//!
//! A finding carries the rule's `id` (its title when it has none) as rule id,
//! its title, its `level` as severity (`medium` when absent), the ATT&CK
//! technique ids of its `attack.tNNNN[.NNN]` tags, its `author` (the Detection
//! Rule License of SigmaHQ rules requires crediting it wherever a match is
//! shown; `unknown` when absent) and the triggering event's id. The message
//! names the rule, the selections that matched and the matched field values;
//! evidence holds the rule's first reference, its file and logsource, the
//! matched selections and the matched fields (`match.<Field>`).

#![deny(missing_docs)]

pub mod mapping;

use edr_sdk::prelude::*;
use edr_sigma_core::rsigma_eval::EvaluationResult;
use edr_sigma_core::rsigma_parser::Level;
use edr_sigma_core::rules::{techniques, EvalMode, Loader, DEFAULT_LEVEL, INDEX_ATTRIBUTE};
use mapping::{map_event, Category, Scratch};

/// Rule loading and checking, shared with the agent (`edr sigma check`).
pub use edr_sigma_core::rules;
pub use edr_sigma_core::{check_dir, is_rule_file, CategoryCounts, CheckReport, CheckSummary, LoadError, RuleOutcome};

/// What a finding of a loaded rule carries, its severity mapped to ours.
pub type RuleMeta = edr_sigma_core::RuleMeta<Severity>;
type RuleSet = edr_sigma_core::RuleSet<Severity>;

/// Our own rules (this crate's `rules/` directory): file name and YAML.
pub const BUILTIN_RULES: &[(&str, &str)] = &[
    ("edr_ssh_authorized_keys_change.yml", include_str!("../rules/edr_ssh_authorized_keys_change.yml")),
    ("edr_ld_so_preload_write.yml", include_str!("../rules/edr_ld_so_preload_write.yml")),
    ("edr_setuid_setgid_file.yml", include_str!("../rules/edr_setuid_setgid_file.yml")),
    ("edr_shell_history_clearing.yml", include_str!("../rules/edr_shell_history_clearing.yml")),
    ("edr_shadow_read_unusual_process.yml", include_str!("../rules/edr_shadow_read_unusual_process.yml")),
    ("edr_decode_into_interpreter.yml", include_str!("../rules/edr_decode_into_interpreter.yml")),
    ("edr_download_piped_to_shell.yml", include_str!("../rules/edr_download_piped_to_shell.yml")),
    ("edr_interpreter_pty_spawn.yml", include_str!("../rules/edr_interpreter_pty_spawn.yml")),
    ("edr_chattr_immutable_removed.yml", include_str!("../rules/edr_chattr_immutable_removed.yml")),
    ("edr_kernel_module_load.yml", include_str!("../rules/edr_kernel_module_load.yml")),
    ("edr_local_account_change.yml", include_str!("../rules/edr_local_account_change.yml")),
    ("edr_dangerous_file_capability.yml", include_str!("../rules/edr_dangerous_file_capability.yml")),
    ("edr_timestomp_touch.yml", include_str!("../rules/edr_timestomp_touch.yml")),
    ("edr_private_key_search.yml", include_str!("../rules/edr_private_key_search.yml")),
    ("edr_password_policy_discovery.yml", include_str!("../rules/edr_password_policy_discovery.yml")),
    ("edr_encrypted_archive.yml", include_str!("../rules/edr_encrypted_archive.yml")),
    ("edr_virtualization_discovery.yml", include_str!("../rules/edr_virtualization_discovery.yml")),
    ("edr_suid_file_search.yml", include_str!("../rules/edr_suid_file_search.yml")),
    ("edr_shell_escape_from_utility.yml", include_str!("../rules/edr_shell_escape_from_utility.yml")),
];

/// Longest matched value copied into a message or evidence, in bytes.
const MAX_VALUE: usize = 256;
/// Matched fields kept as evidence per finding.
const MAX_MATCHED_FIELDS: usize = 8;
/// Rules that failed to load logged one by one at init; the rest are counted.
const MAX_LOGGED_FAILURES: usize = 20;

/// The Sigma detector.
pub struct Sigma {
    rules: RuleSet,
    outcomes: Vec<RuleOutcome>,
    scratch: Scratch,
    /// Reused for each event's matches.
    matches: Vec<EvaluationResult>,
}

impl Sigma {
    /// Loads rules from a configuration (see the crate docs for the settings).
    /// Fails only on a bad setting or when no rule loaded.
    pub fn load(config: &Config) -> Result<Self, String> {
        let enabled = match config.get("categories") {
            None => None,
            Some(_) => {
                let mut cats = Vec::new();
                for name in config.get_list("categories") {
                    match Category::parse(&name) {
                        Some(c) => cats.push(c),
                        None => {
                            return Err(format!(
                                "setting `categories`: unknown category `{name}`; expected a comma-separated list of {}",
                                Category::ALL.map(|c| c.as_str()).join(", ")
                            ))
                        }
                    }
                }
                if cats.is_empty() {
                    return Err("setting `categories` is empty: list at least one category, or remove the setting to load all".into());
                }
                Some(cats)
            }
        };
        let builtin = config.get_bool("builtin_rules", true)?;
        let mode = match config.get("engine") {
            None => EvalMode::default(),
            Some(v) => EvalMode::parse(v).ok_or_else(|| format!("setting `engine`: unknown value `{v}`; expected `compiled` or `interpreted`"))?,
        };

        let mut loader = Loader::new(enabled);
        let mut rule_files = 0usize;
        for f in config.files.iter().filter(|f| is_rule_file(&f.name)) {
            rule_files += 1;
            loader.add_file(&f.name, &f.content);
        }
        if builtin {
            for (name, yaml) in BUILTIN_RULES {
                loader.add_file(&format!("builtin:{name}"), yaml.as_bytes());
            }
        }
        let (rules, outcomes) = loader.finish_with(mode);
        let detector = Sigma { rules: rules.map_severity(severity), outcomes, scratch: Scratch::default(), matches: Vec::new() };

        let loaded = detector.loaded();
        if loaded == 0 {
            let first = detector.outcomes.iter().find_map(|o| o.error.as_ref().map(|e| format!(" (first problem: {}: {e})", o.file))).unwrap_or_default();
            return Err(format!(
                "no Sigma rule loaded: {rule_files} rule file(s) (.yml/.yaml) in the pack{}, {} rule(s) failed{first}. \
                 Ship Sigma detection rules with `product: linux` and a category among {} as pack data files",
                if builtin { " plus the built-in rules" } else { ", built-in rules disabled" },
                detector.failed(),
                Category::ALL.map(|c| c.as_str()).join(", ")
            ));
        }
        let per_category: Vec<String> =
            Category::ALL.iter().filter(|c| detector.rules.count(**c) > 0).map(|c| format!("{c} {}", detector.rules.count(*c))).collect();
        host::log(
            LogLevel::Info,
            &format!(
                "sigma: loaded {loaded} rule(s) ({}); {} not loaded, {} skipped by `categories`",
                per_category.join(", "),
                detector.failed(),
                detector.skipped()
            ),
        );
        let failed: Vec<&RuleOutcome> =
            detector.outcomes.iter().filter(|o| o.error.as_ref().is_some_and(|e| !matches!(e, LoadError::CategoryDisabled { .. }))).collect();
        for o in failed.iter().take(MAX_LOGGED_FAILURES) {
            if let Some(e) = &o.error {
                host::log(LogLevel::Warn, &format!("sigma: {}: rule \"{}\" not loaded: {e}", o.file, o.name()));
            }
        }
        if failed.len() > MAX_LOGGED_FAILURES {
            host::log(
                LogLevel::Warn,
                &format!("sigma: ... and {} more rule(s) not loaded; `edr sigma check DIR` lists them all", failed.len() - MAX_LOGGED_FAILURES),
            );
        }
        Ok(detector)
    }

    /// Number of rules loaded.
    pub fn loaded(&self) -> usize {
        self.rules.rules().len()
    }

    /// Number of rules (or rule documents) that failed to load, not counting
    /// those skipped by the `categories` setting.
    pub fn failed(&self) -> usize {
        self.outcomes.iter().filter(|o| o.error.as_ref().is_some_and(|e| !matches!(e, LoadError::CategoryDisabled { .. }))).count()
    }

    /// Number of rules skipped because the `categories` setting excludes them.
    pub fn skipped(&self) -> usize {
        self.outcomes.iter().filter(|o| matches!(o.error, Some(LoadError::CategoryDisabled { .. }))).count()
    }

    /// Number of rules loaded for a category.
    pub fn loaded_in(&self, category: Category) -> usize {
        self.rules.count(category)
    }

    /// What the compiled prefilter made of a category's rules (`None` with
    /// `engine: interpreted`).
    pub fn prefilter_stats(&self, category: Category) -> Option<edr_sigma_core::compiled::PrefilterStats> {
        self.rules.engine(category).stats()
    }

    /// The loaded rules.
    pub fn rules(&self) -> &[RuleMeta] {
        self.rules.rules()
    }

    /// What happened to every rule at load, in file order.
    pub fn outcomes(&self) -> &[RuleOutcome] {
        &self.outcomes
    }

    fn finding(&self, m: &EvaluationResult, event: &Event<'_>, category: Category) -> Finding {
        let meta = m.header.custom_attributes.get(INDEX_ATTRIBUTE).and_then(|v| v.as_u64()).and_then(|i| self.rules.rule(i as usize));
        let (rule_id, title, severity, techniques, author) = match meta {
            Some(r) => (r.key.clone(), r.title.clone(), r.severity, r.techniques.clone(), r.author.clone()),
            // Not reached: every loaded rule carries its index.
            None => (
                m.header.rule_id.clone().unwrap_or_else(|| m.header.rule_title.clone()),
                m.header.rule_title.clone(),
                severity(m.header.level.unwrap_or(DEFAULT_LEVEL)),
                techniques(&m.header.tags),
                "unknown".to_string(),
            ),
        };
        let mut evidence = Vec::new();
        if let Some(reference) = meta.and_then(|r| r.reference.as_ref()) {
            evidence.push(("reference".to_string(), reference.clone()));
        }
        if let Some(r) = meta {
            evidence.push(("rule_file".to_string(), r.file.clone()));
        }
        evidence.push(("logsource".to_string(), format!("linux/{category}")));

        let mut message = format!("Sigma rule \"{title}\" matched");
        if let Some(d) = m.as_detection() {
            if !d.matched_selections.is_empty() {
                // The engine's order is a hash map's: sort for stable messages.
                let mut selections: Vec<&str> = d.matched_selections.iter().map(String::as_str).collect();
                selections.sort_unstable();
                let sel = selections.join(", ");
                message.push_str(&format!(" ({sel})"));
                evidence.push(("selections".to_string(), sel));
            }
            // Also a hash map's order (the selections a `1 of` visits): sort
            // by field, then value, so the same match reads the same on
            // every load.
            let mut fields: Vec<(&str, String)> = d
                .matched_fields
                .iter()
                .map(|fm| {
                    let value = match &fm.value {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (fm.field.as_str(), value)
                })
                .collect();
            fields.sort();
            let mut shown = Vec::new();
            for (field, value) in fields {
                if shown.len() >= MAX_MATCHED_FIELDS {
                    break;
                }
                let value = truncate(&value, MAX_VALUE);
                let key = format!("match.{field}");
                if evidence.iter().any(|(k, v)| *k == key && *v == value) {
                    continue;
                }
                shown.push(format!("{field}={value:?}"));
                evidence.push((key, value));
            }
            if !shown.is_empty() {
                message.push_str(": ");
                message.push_str(&shown.join(", "));
            }
        }
        Finding { rule_id, title, severity, techniques, message, author, event_ids: vec![event.id], evidence }
    }
}

/// Maps a Sigma level to a finding severity.
pub fn severity(level: Level) -> Severity {
    match level {
        Level::Informational => Severity::Informational,
        Level::Low => Severity::Low,
        Level::Medium => Severity::Medium,
        Level::High => Severity::High,
        Level::Critical => Severity::Critical,
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

impl Detector for Sigma {
    const NAME: &'static str = "sigma";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "Sigma rules (Linux: process_creation, file_event, file_delete, file_access, network_connection)";
    const SUBSCRIPTIONS: &'static [EventKind] = &[EventKind::ProcessExec, EventKind::File, EventKind::Network];

    fn init(config: &Config) -> Result<Self, String> {
        Sigma::load(config)
    }

    fn on_event(&mut self, event: &Event<'_>, findings: &mut Findings) {
        if let EventBody::ProcessExec(x) = &event.body {
            if self.rules.count(Category::ProcessCreation) == 0 {
                return;
            }
            self.scratch.fill(x);
        }
        let Some(view) = map_event(&event.body, &self.scratch) else { return };
        let category = view.category();
        if self.rules.count(category) == 0 {
            return;
        }
        let mut matches = std::mem::take(&mut self.matches);
        self.rules.evaluate(category, &view, &mut matches);
        for m in matches.drain(..) {
            findings.push(self.finding(&m, event, category));
        }
        self.matches = matches;
    }
}

edr_sdk::export_detector!(Sigma);
