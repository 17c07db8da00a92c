//! Shared by the integration tests: the corpus location, case files, configs.
#![allow(dead_code)]

use edr_sdk::{Config, DataFile, Finding};
use std::path::{Path, PathBuf};

/// The SigmaHQ Linux rules, or `None` after a recorded skip (edr-testkit).
pub fn corpus() -> Option<&'static Path> {
    // Leaked once per test: the tests pass the path around by reference.
    edr_testkit::sigmahq_linux_rules().map(|dir| &*Box::leak(dir.into_boxed_path()))
}

/// This crate's own rules directory.
pub fn builtin_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")
}

/// One record of `tests/cases.jsonl` or `tests/builtin_cases.jsonl`.
#[derive(Debug)]
pub struct Case {
    /// Line number in the case file.
    pub line: usize,
    /// Rule file, relative to the rules directory.
    pub rule: String,
    /// The rule's id.
    pub id: String,
    /// What the case is about.
    pub note: String,
    /// One ECS JSON line that must fire the rule.
    pub positive: String,
    /// One ECS JSON line that must not fire it.
    pub negative: String,
}

/// Reads a case file (path relative to the crate root).
pub fn cases(file: &str) -> Vec<Case> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{file}:{}: {e}", i + 1));
        let s = |k: &str| v[k].as_str().unwrap_or_else(|| panic!("{file}:{}: `{k}` missing", i + 1)).to_string();
        let ev = |k: &str| {
            assert!(v[k].is_object(), "{file}:{}: `{k}` must be an ECS event object", i + 1);
            v[k].to_string()
        };
        out.push(Case { line: i + 1, rule: s("rule"), id: s("id"), note: s("note"), positive: ev("positive"), negative: ev("negative") });
    }
    out
}

/// Every `.yml` file under `dir` as pack data files (names relative to `dir`).
pub fn rule_files(dir: &Path) -> Vec<DataFile> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<DataFile>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(base, &p, out);
            } else if p.extension().is_some_and(|e| e == "yml" || e == "yaml") {
                let name = p.strip_prefix(base).unwrap().display().to_string();
                out.push(DataFile { name, content: std::fs::read(&p).unwrap() });
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out
}

/// A configuration with these files and settings.
pub fn config(files: Vec<DataFile>, settings: &[(&str, &str)]) -> Config {
    Config { settings: settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), files }
}

/// A data file from a string.
pub fn yaml(name: &str, text: &str) -> DataFile {
    DataFile { name: name.to_string(), content: text.as_bytes().to_vec() }
}

/// The rule ids of findings.
pub fn ids(findings: &[Finding]) -> Vec<&str> {
    findings.iter().map(|f| f.rule_id.as_str()).collect()
}
