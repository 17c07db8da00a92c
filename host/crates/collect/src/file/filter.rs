//! Include/exclude path patterns.
//!
//! A pattern is an absolute path whose components may hold `*` (any run of
//! characters) and `?` (one character); wildcards never cross a `/`. A
//! pattern matches the path it names and every path below it.

use std::path::{Path, PathBuf};

/// One path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pattern {
    parts: Vec<String>,
}

impl Pattern {
    /// `None` for a relative or empty pattern.
    pub fn new(s: &str) -> Option<Pattern> {
        if !s.starts_with('/') {
            return None;
        }
        let parts = s.split('/').filter(|p| !p.is_empty() && *p != ".").map(str::to_string).collect();
        Some(Pattern { parts })
    }

    /// Whether `path` is the pattern's path or below it.
    pub fn matches(&self, path: &str) -> bool {
        let mut comps = path.split('/').filter(|p| !p.is_empty());
        for part in &self.parts {
            match comps.next() {
                Some(c) if wildcard(part, c) => {}
                _ => return false,
            }
        }
        true
    }

    /// The fixed directory prefix before the first wildcard component.
    pub fn base(&self) -> PathBuf {
        let mut p = PathBuf::from("/");
        for part in self.parts.iter().take_while(|p| !p.contains(['*', '?'])) {
            p.push(part);
        }
        p
    }

    /// The existing paths the pattern names (wildcards expanded).
    pub fn expand(&self) -> Vec<PathBuf> {
        let mut cur = vec![PathBuf::from("/")];
        for part in &self.parts {
            let mut next = Vec::new();
            for dir in &cur {
                if part.contains(['*', '?']) {
                    let Ok(rd) = std::fs::read_dir(dir) else {
                        continue;
                    };
                    for e in rd.flatten() {
                        if e.file_name().to_str().is_some_and(|n| wildcard(part, n)) {
                            next.push(dir.join(e.file_name()));
                        }
                    }
                } else {
                    next.push(dir.join(part));
                }
            }
            cur = next;
        }
        cur.retain(|p| crate::procfs::exists(p));
        cur.sort();
        cur
    }

    /// The same pattern with its base replaced by the base's canonical path,
    /// when that differs (e.g. `/lib` -> `/usr/lib`, `/tmp` on a symlink).
    fn canonical(&self) -> Option<Pattern> {
        let base = self.base();
        let canon = std::fs::canonicalize(&base).ok()?;
        if canon == base {
            return None;
        }
        let fixed = self.parts.iter().take_while(|p| !p.contains(['*', '?'])).count();
        let mut s = canon.to_string_lossy().into_owned();
        for part in &self.parts[fixed..] {
            s.push('/');
            s.push_str(part);
        }
        Pattern::new(&s)
    }
}

/// `*` and `?` matching within one component.
pub(crate) fn wildcard(pat: &str, s: &str) -> bool {
    let p: Vec<char> = pat.chars().collect();
    let t: Vec<char> = s.chars().collect();
    let (mut i, mut j) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while j < t.len() {
        if i < p.len() && (p[i] == '?' || p[i] == t[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    while i < p.len() && p[i] == '*' {
        i += 1;
    }
    i == p.len()
}

/// The include and exclude sets of the file collector.
#[derive(Debug, Clone, Default)]
pub(crate) struct PathFilter {
    include: Vec<Pattern>,
    exclude: Vec<Pattern>,
}

impl PathFilter {
    /// Builds the filter; relative patterns are skipped with a warning.
    /// Canonical forms of existing bases are added so that paths resolved by
    /// the kernel (which are canonical) match.
    pub fn new(include: &[String], exclude: &[String], exclude_paths: &[PathBuf]) -> PathFilter {
        let build = |list: &mut dyn Iterator<Item = String>| {
            let mut out: Vec<Pattern> = Vec::new();
            for s in list {
                match Pattern::new(&s) {
                    Some(p) => {
                        if let Some(c) = p.canonical() {
                            out.push(c);
                        }
                        out.push(p);
                    }
                    None => {
                        tracing::warn!(pattern = %s, "file collector: ignoring a pattern that is not an absolute path")
                    }
                }
            }
            out.dedup();
            out
        };
        let include = build(&mut include.iter().cloned());
        let exclude = build(&mut exclude.iter().cloned().chain(exclude_paths.iter().map(|p| p.to_string_lossy().into_owned())));
        PathFilter { include, exclude }
    }

    /// Whether a path is reported: included and not excluded.
    pub fn allows(&self, path: &str) -> bool {
        self.include.iter().any(|p| p.matches(path)) && !self.excluded(path)
    }

    /// Whether a path is excluded.
    pub fn excluded(&self, path: &str) -> bool {
        self.exclude.iter().any(|p| p.matches(path))
    }

    /// The include patterns.
    pub fn include(&self) -> &[Pattern] {
        &self.include
    }
}

/// The existing directories to watch for the include patterns: a matched
/// directory is watched recursively, a matched file through its parent.
/// Nested duplicates are removed.
pub(crate) fn watch_roots(filter: &PathFilter, extra_files: &[PathBuf]) -> Vec<(PathBuf, bool)> {
    let mut roots: Vec<(PathBuf, bool)> = Vec::new();
    let mut add = |p: &Path| {
        if p.is_dir() {
            roots.push((p.to_path_buf(), true));
        } else if let Some(parent) = p.parent() {
            roots.push((parent.to_path_buf(), false));
        }
    };
    for pat in filter.include() {
        let found = pat.expand();
        if found.is_empty() {
            tracing::debug!(pattern = ?pat.base(), "file collector: include path does not exist; skipped");
        }
        for p in found {
            add(&p);
        }
    }
    for f in extra_files {
        if crate::procfs::exists(f) {
            add(f);
        }
    }
    roots.sort();
    roots.dedup();
    // Drop what a recursive root above already covers.
    let recursive: Vec<PathBuf> = roots.iter().filter(|(_, r)| *r).map(|(p, _)| p.clone()).collect();
    roots.retain(|(p, r)| !recursive.iter().any(|q| (p != q || !r) && p.starts_with(q)));
    roots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_stay_within_a_component() {
        assert!(wildcard("*", "anything"));
        assert!(wildcard("systemd-private-*", "systemd-private-abc-chronyd.service-x"));
        assert!(wildcard(".X*-lock", ".X0-lock"));
        assert!(wildcard("a?c", "abc"));
        assert!(!wildcard("a?c", "abbc"));
        assert!(!wildcard("systemd-private-*", "systemd"));
        assert!(wildcard("*.conf", "x.conf"));
        assert!(!wildcard("*.conf", "x.confd"));
    }

    #[test]
    fn patterns_match_themselves_and_below() {
        let p = Pattern::new("/home/*/.ssh").unwrap();
        assert!(p.matches("/home/alice/.ssh"));
        assert!(p.matches("/home/alice/.ssh/authorized_keys"));
        assert!(!p.matches("/home/alice/.sshd"));
        assert!(!p.matches("/home/alice"));
        assert!(!p.matches("/root/.ssh/authorized_keys"));
        assert_eq!(p.base(), PathBuf::from("/home"));
        let t = Pattern::new("/tmp/").unwrap();
        assert!(t.matches("/tmp") && t.matches("/tmp/x/y") && !t.matches("/tmpfoo"));
        assert!(Pattern::new("relative/path").is_none());
        assert!(Pattern::new("/").unwrap().matches("/anything"));
    }

    #[test]
    fn include_exclude_filtering() {
        let f = PathFilter::new(
            &["/etc".into(), "/tmp".into(), "/home/*/.bashrc".into()],
            &crate::DEFAULT_EXCLUDE.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            &[PathBuf::from("/var/lib/edr")],
        );
        assert!(f.allows("/etc/cron.d/evil"));
        assert!(f.allows("/etc/ld.so.cache"), "kept on purpose");
        assert!(f.allows("/tmp/payload.sh"));
        assert!(f.allows("/home/bob/.bashrc"));
        assert!(!f.allows("/home/bob/.cache/x"));
        assert!(!f.allows("/tmp/.X11-unix/X0"));
        assert!(!f.allows("/tmp/.X0-lock"));
        assert!(!f.allows("/tmp/systemd-private-1234-chronyd.service-abc/tmp/x"));
        assert!(!f.allows("/usr/share/doc/x"));
        assert!(f.excluded("/var/lib/edr/alerts.jsonl"));
        assert!(!f.allows("/var/lib/edr/alerts.jsonl"));
    }

    #[test]
    fn symlinked_bases_also_match_their_canonical_form() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let f = PathFilter::new(&[link.to_string_lossy().into_owned()], &[], &[]);
        let canon = std::fs::canonicalize(&real).unwrap();
        assert!(f.allows(&format!("{}/file", canon.display())));
        assert!(f.allows(&format!("{}/file", link.display())));
    }

    #[test]
    fn watch_roots_expand_globs_and_drop_nested() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for u in ["alice", "bob"] {
            std::fs::create_dir_all(d.join(u).join(".ssh")).unwrap();
            std::fs::write(d.join(u).join(".bashrc"), "").unwrap();
        }
        let base = d.to_string_lossy();
        let f = PathFilter::new(&[format!("{base}/*/.ssh"), format!("{base}/*/.bashrc"), format!("{base}/alice"), format!("{base}/missing")], &[], &[]);
        let roots = watch_roots(&f, &[]);
        let canon = std::fs::canonicalize(d).unwrap();
        let want: Vec<(PathBuf, bool)> = vec![(canon.join("alice"), true), (canon.join("bob"), false), (canon.join("bob/.ssh"), true)];
        for w in &want {
            assert!(roots.contains(w), "{w:?} not in {roots:?}");
        }
        assert!(!roots.iter().any(|(p, _)| p.ends_with("alice/.ssh")), "covered by /alice: {roots:?}");
        assert!(!roots.iter().any(|(p, _)| p.ends_with("missing")));
    }
}
