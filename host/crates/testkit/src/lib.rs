//! Test support shared by the workspace's integration tests.
//!
//! A test that cannot run here calls [`skip`] (or [`require_root!`]) instead
//! of returning silently: the reason is printed, appended to the file named by
//! `EDR_SKIP_LOG` (`scripts/test.sh` prints a summary of it at the end of the
//! run), and under `CI=true` as root, where every privileged test must run,
//! the skip fails the test instead.
#![deny(missing_docs)]

use std::fmt::Display;
use std::io::Write;

/// Environment variable naming the file skips are appended to.
pub const SKIP_LOG_ENV: &str = "EDR_SKIP_LOG";

/// Whether the test process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether this run must not skip: `CI=true` and root, as the CI runs.
pub fn skips_forbidden() -> bool {
    is_root() && std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The running test's name (libtest names each test's thread after it).
fn test_name() -> String {
    std::thread::current().name().unwrap_or("?").to_string()
}

/// Records that the calling test skips, and why.
///
/// Prints `skipped: REASON`, appends a line to `$EDR_SKIP_LOG`,
/// and panics instead when [`skips_forbidden`]: a CI run as root must run
/// every test it has. The caller returns right after.
pub fn skip(reason: impl Display) {
    let reason = reason.to_string();
    if skips_forbidden() {
        panic!("{} would skip ({reason}), but CI=true as root must run every test: install what it needs", test_name());
    }
    record("skipped", &reason);
}

/// Prints and appends one `TEST<TAB>KIND<TAB>REASON` line to `$EDR_SKIP_LOG`.
fn record(kind: &str, reason: &str) {
    let reason = reason.replace(['\n', '\t'], " ");
    let name = test_name();
    eprintln!("{kind}: {reason}");
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV) {
        // One small O_APPEND write per line keeps concurrent tests' lines whole.
        let line = format!("{name}\t{kind}\t{reason}\n");
        let res = std::fs::OpenOptions::new().create(true).append(true).open(&path).and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = res {
            eprintln!("edr-testkit: cannot record the skip in {}: {e}", std::path::Path::new(&path).display());
        }
    }
}

/// Records that the calling test does not apply to this run (for example a
/// check of what an unprivileged user gets, run as root): listed in the
/// summary like a skip, but never a failure, since no install could make it
/// run here. The caller returns right after.
pub fn not_applicable(reason: impl Display) {
    record("not applicable", &reason.to_string());
}

/// Returns from the calling test, recorded as skipped, unless running as root.
#[macro_export]
macro_rules! require_root {
    ($why:expr) => {
        if !$crate::is_root() {
            $crate::skip(concat!("needs root: ", $why));
            return;
        }
    };
    () => {
        $crate::require_root!("privileged kernel facilities")
    };
}

/// The SigmaHQ Linux rules (`corpora/sigmahq-linux/rules/linux` in the shared
/// folder beside the repository; read, never copied into it), or `None` after
/// a [`skip`] naming where it was looked for.
pub fn sigmahq_linux_rules() -> Option<std::path::PathBuf> {
    const REL: &str = "corpora/sigmahq-linux/rules/linux";
    let beside_repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../../shared").join(REL);
    let candidates = [beside_repo, std::path::Path::new("/work/shared").join(REL)];
    if let Some(dir) = candidates.iter().find(|d| d.is_dir()) {
        return Some(dir.clone());
    }
    skip(format!("the SigmaHQ corpus is not at {} or {}", candidates[0].display(), candidates[1].display()));
    None
}

/// Whether `program` is on `PATH`; when not, records the skip, naming the
/// Debian package that has it. The caller returns on `false`.
pub fn have_program(program: &str, debian_package: &str) -> bool {
    let found = std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()));
    if !found {
        skip(format!("{program} not on PATH (Debian package {debian_package})"));
    }
    found
}

/// A loopback TCP port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port").local_addr().expect("its address").port()
}

/// Polls `f` every 20 ms until it is true or `limit` has passed; returns
/// whether it became true (`f` is asked once more at the end).
pub fn wait_until(limit: std::time::Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + limit;
    while std::time::Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    f()
}
