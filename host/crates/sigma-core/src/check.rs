//! `edr sigma check DIR`: which rules of a directory the `sigma` plugin can
//! serve, decided by the same [`Loader`] its `init` uses.

use crate::is_rule_file;
use crate::rules::{LoadError, Loader, RuleOutcome};
use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The verdict on every rule file of a directory.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// The directory checked.
    pub dir: String,
    /// Number of rule files (`.yml`/`.yaml`) found.
    pub files: usize,
    /// One entry per rule, or per document or file that failed before a rule
    /// could be read, in path order. `file` is relative to `dir`.
    pub rules: Vec<RuleOutcome>,
    /// Counts.
    pub summary: CheckSummary,
}

/// Counts of a [`CheckReport`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckSummary {
    /// Rules that load.
    pub loaded: usize,
    /// Rules (or documents, or files) that do not.
    pub not_loaded: usize,
    /// Loaded rules with at least one warning.
    pub with_warnings: usize,
    /// By logsource label (`linux/process_creation`, `linux/service:auditd`,
    /// `(unparsed)` for documents that did not parse).
    pub by_logsource: BTreeMap<String, CategoryCounts>,
    /// Not-loaded entries by reason kind (`unsupported_logsource`, ...).
    pub by_reason: BTreeMap<String, usize>,
}

/// Loaded and not-loaded counts of one logsource.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CategoryCounts {
    /// Rules that load.
    pub loaded: usize,
    /// Rules that do not.
    pub not_loaded: usize,
}

impl Serialize for RuleOutcome {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("RuleOutcome", 8)?;
        st.serialize_field("file", &self.file)?;
        st.serialize_field("title", &self.title)?;
        st.serialize_field("id", &self.id)?;
        st.serialize_field("logsource", &self.logsource)?;
        st.serialize_field("category", &self.category.map(|c| c.as_str()))?;
        st.serialize_field("status", if self.loaded() { "loaded" } else { "not_loaded" })?;
        let reason = self.error.as_ref().map(|e| {
            let mut v = serde_json::to_value(e).unwrap_or(serde_json::Value::Null);
            if let Some(o) = v.as_object_mut() {
                o.insert("message".into(), e.to_string().into());
            }
            v
        });
        st.serialize_field("reason", &reason)?;
        st.serialize_field("warnings", &self.warnings)?;
        st.end()
    }
}

/// Checks every `.yml`/`.yaml` file under `dir` (recursively) the way the
/// plugin's `init` loads rules, with every category enabled. Never fails: an
/// unreadable directory or file is an entry of the report.
pub fn check_dir(dir: &Path) -> CheckReport {
    let mut files = Vec::new();
    let mut loader = Loader::new(None);
    if let Err(e) = collect(dir, &mut files) {
        loader.add_failed_file(&dir.display().to_string(), LoadError::Unreadable { message: e.to_string() });
    }
    files.sort();
    for path in &files {
        let rel = path.strip_prefix(dir).unwrap_or(path).display().to_string();
        match std::fs::read(path) {
            Ok(bytes) => loader.add_file(&rel, &bytes),
            Err(e) => loader.add_failed_file(&rel, LoadError::Unreadable { message: e.to_string() }),
        }
    }
    let (_, rules) = loader.finish();
    let mut summary = CheckSummary::default();
    for r in &rules {
        let label = r.logsource.clone().unwrap_or_else(|| "(unparsed)".to_string());
        let counts = summary.by_logsource.entry(label).or_default();
        match &r.error {
            None => {
                counts.loaded += 1;
                summary.loaded += 1;
                if !r.warnings.is_empty() {
                    summary.with_warnings += 1;
                }
            }
            Some(e) => {
                counts.not_loaded += 1;
                summary.not_loaded += 1;
                *summary.by_reason.entry(e.kind().to_string()).or_default() += 1;
            }
        }
    }
    CheckReport { dir: dir.display().to_string(), files: files.len(), rules, summary }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.file_name().and_then(|n| n.to_str()).is_some_and(is_rule_file) {
            out.push(path);
        }
    }
    Ok(())
}

impl CheckReport {
    /// True when every rule found loads.
    pub fn all_loaded(&self) -> bool {
        self.summary.not_loaded == 0
    }

    /// The report as pretty-printed JSON (what `--json` prints).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"cannot serialize the report: {e}\"}}"))
    }

    /// The report for a terminal: the summary, then every rule that does not
    /// load with why, then the warnings of those that do.
    pub fn render_text(&self) -> String {
        let s = &self.summary;
        let mut out = String::new();
        let _ = writeln!(out, "Sigma rules in {}: {} file(s), {} rule(s) load, {} do not", self.dir, self.files, s.loaded, s.not_loaded);
        let _ = writeln!(out);
        let width = s.by_logsource.keys().map(|k| k.len()).max().unwrap_or(9).max(9);
        let _ = writeln!(out, "  {:<width$}  {:>6}  {:>10}", "logsource", "loaded", "not loaded");
        for (label, c) in &s.by_logsource {
            let _ = writeln!(out, "  {label:<width$}  {:>6}  {:>10}", c.loaded, c.not_loaded);
        }
        if !s.by_reason.is_empty() {
            let _ = writeln!(out);
            let reasons: Vec<String> = s.by_reason.iter().map(|(k, n)| format!("{k} {n}")).collect();
            let _ = writeln!(out, "Not loaded, by reason: {}", reasons.join(", "));
            for r in self.rules.iter().filter(|r| !r.loaded()) {
                let e = r.error.as_ref().map(|e| e.to_string()).unwrap_or_default();
                match &r.title {
                    Some(t) => {
                        let _ = writeln!(out, "  {}: \"{t}\": {e}", r.file);
                    }
                    None => {
                        let _ = writeln!(out, "  {}: {e}", r.file);
                    }
                }
            }
        }
        if s.with_warnings > 0 {
            let _ = writeln!(out);
            let _ = writeln!(out, "Loaded with warnings: {}", s.with_warnings);
            for r in self.rules.iter().filter(|r| r.loaded() && !r.warnings.is_empty()) {
                for w in &r.warnings {
                    let _ = writeln!(out, "  {}: \"{}\": {w}", r.file, r.name());
                }
            }
        }
        out
    }
}
