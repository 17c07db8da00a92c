//! The data directory is trusted only when no one but the agent's user can
//! change it, and nothing in it is ever written through a link (issue 14,
//! items 2, 7 and 8).

mod common;
use common::*;
use edr_datadir::{open_append_path, private_dir_all, write_atomically_path, DataDir, DataDirError};
use std::io::Write;
use std::path::Path;

const VICTIM_TEXT: &str = "root's secret\n";

fn victim(dir: &Path) -> std::path::PathBuf {
    let v = dir.join("victim");
    std::fs::write(&v, VICTIM_TEXT).unwrap();
    v
}

fn assert_victim_unchanged(v: &Path) {
    assert_eq!(std::fs::read_to_string(v).unwrap(), VICTIM_TEXT, "the file a planted link points at was written");
}

#[test]
fn a_missing_data_dir_is_created_0700_and_its_files_0600() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("a/b/data");
    let d = DataDir::open_or_create(&path, edr_datadir::agent_uid()).unwrap();
    assert_eq!(mode(&path), 0o700);
    writeln!(d.open_append("alerts.jsonl").unwrap(), "{{}}").unwrap();
    assert_eq!(mode(&path.join("alerts.jsonl")), 0o600);
    let sub = d.subdir("packs").unwrap();
    assert_eq!(mode(&path.join("packs")), 0o700);
    sub.write_atomically("state.json", b"{}").unwrap();
    assert_eq!(mode(&path.join("packs/state.json")), 0o600);
    assert_eq!(std::fs::read(path.join("packs/state.json")).unwrap(), b"{}");
    // Reopening the same directory is fine.
    DataDir::open_or_create(&path, edr_datadir::agent_uid()).unwrap();
}

#[test]
fn an_agent_owned_0755_dir_and_0644_files_are_tightened() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("data");
    std::fs::create_dir(&path).unwrap();
    chmod(&path, 0o755);
    std::fs::write(path.join("events.db"), b"").unwrap();
    chmod(&path.join("events.db"), 0o644);
    std::fs::create_dir(path.join("state")).unwrap();
    chmod(&path.join("state"), 0o755);
    let d = DataDir::open_or_create(&path, edr_datadir::agent_uid()).unwrap();
    assert_eq!(mode(&path), 0o700);
    d.open_read_write("events.db").unwrap();
    assert_eq!(mode(&path.join("events.db")), 0o600);
    d.subdir("state").unwrap();
    assert_eq!(mode(&path.join("state")), 0o700);
}

#[test]
fn a_dir_writable_by_others_is_refused_with_the_fix() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("data");
    std::fs::create_dir(&path).unwrap();
    chmod(&path, 0o777);
    let e = DataDir::open_or_create(&path, edr_datadir::agent_uid()).unwrap_err().to_string();
    assert!(e.contains(&path.display().to_string()) && e.contains("writable by every user (mode 0777)") && e.contains("chmod 0700"), "{e}");
    assert_eq!(mode(&path), 0o777, "a refused directory is left as found");
    chmod(&path, 0o770);
    let e = DataDir::open_or_create(&path, edr_datadir::agent_uid()).unwrap_err().to_string();
    assert!(e.contains("writable by its group"), "{e}");
}

#[test]
fn a_data_dir_made_by_another_user_with_a_planted_link_is_refused() {
    require_root!();
    // /tmp-like parent: world-writable and sticky, as the attack.
    let t = tempfile::tempdir().unwrap();
    chmod(t.path(), 0o1777);
    let v = victim(t.path());
    let path = t.path().join("d");
    let made = std::process::Command::new("sh")
        .args(["-c", &format!("mkdir {0} && ln -s {1} {0}/alerts.jsonl", path.display(), v.display())])
        .uid(NOBODY)
        .gid(NOBODY)
        .status()
        .unwrap();
    assert!(made.success());
    let e = DataDir::open_or_create(&path, 0).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, DataDirError::Unsafe { .. }), "{e:?}");
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("owned by uid 65534") && msg.contains("chown root:root") && msg.contains("chmod 0700"),
        "{msg}"
    );
    assert_victim_unchanged(&v);
}

use std::os::unix::process::CommandExt;

#[test]
fn a_parent_owned_by_another_user_or_writable_without_sticky_is_refused() {
    require_root!();
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    std::fs::create_dir(&home).unwrap();
    chown(&home, NOBODY);
    let e = DataDir::open_or_create(&home.join("data"), 0).unwrap_err().to_string();
    assert!(e.contains(&home.display().to_string()) && e.contains("owned by uid 65534"), "{e}");
    let shared = t.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o777);
    let e = DataDir::open_or_create(&shared.join("data"), 0).unwrap_err().to_string();
    assert!(e.contains("without the sticky bit (mode 0777)"), "{e}");
    // Sticky (like /tmp) and the data dir made by root itself: fine.
    chmod(&shared, 0o1777);
    DataDir::open_or_create(&shared.join("data"), 0).unwrap();
    assert_eq!(mode(&shared.join("data")), 0o700);
}

#[test]
fn a_symlinked_data_dir_or_subdir_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let real = t.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let link = t.path().join("data");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let e = DataDir::open_or_create(&link, edr_datadir::agent_uid()).unwrap_err();
    assert!(matches!(&e, DataDirError::Symlink { path } if *path == link), "{e:?}");
    assert!(e.to_string().contains("symbolic link"), "{e}");
    let d = DataDir::open_or_create(&real, edr_datadir::agent_uid()).unwrap();
    std::os::unix::fs::symlink(t.path(), real.join("rejected")).unwrap();
    assert!(matches!(d.subdir("rejected"), Err(DataDirError::Symlink { .. })));
    std::fs::write(real.join("plain"), b"x").unwrap();
    assert!(matches!(d.subdir("plain"), Err(DataDirError::Unsafe { .. })));
}

#[test]
fn a_planted_link_in_a_root_made_dir_is_never_followed() {
    let t = tempfile::tempdir().unwrap();
    let v = victim(t.path());
    let path = t.path().join("data");
    let d = DataDir::open_or_create(&path, edr_datadir::agent_uid()).unwrap();
    std::os::unix::fs::symlink(&v, path.join("alerts.jsonl")).unwrap();
    let e = d.open_append("alerts.jsonl").unwrap_err();
    assert!(matches!(&e, DataDirError::Symlink { .. }), "{e:?}");
    assert!(e.to_string().contains(&path.join("alerts.jsonl").display().to_string()), "{e}");
    assert!(matches!(d.open_read("alerts.jsonl"), Err(DataDirError::Symlink { .. })));
    assert!(matches!(open_append_path(&path.join("alerts.jsonl")), Err(DataDirError::Symlink { .. })));
    // An atomic write replaces the link itself.
    std::os::unix::fs::symlink(&v, path.join("state.json")).unwrap();
    write_atomically_path(&path.join("state.json"), b"{}").unwrap();
    assert!(!std::fs::symlink_metadata(path.join("state.json")).unwrap().file_type().is_symlink());
    // Even a link at the temporary name is not written through.
    std::os::unix::fs::symlink(&v, path.join(".note.reason.tmp")).unwrap();
    d.write_atomically("note.reason", b"why\n").unwrap();
    // A rename onto a link replaces the link.
    std::os::unix::fs::symlink(&v, path.join("moved")).unwrap();
    std::fs::write(path.join("src"), b"archive").unwrap();
    d.rename_to("src", &d, "moved").unwrap();
    assert_eq!(std::fs::read(path.join("moved")).unwrap(), b"archive");
    assert_victim_unchanged(&v);
    // A linked directory given by path is refused too.
    std::os::unix::fs::symlink(t.path(), path.join("state")).unwrap();
    assert!(matches!(private_dir_all(&path.join("state")), Err(DataDirError::Symlink { .. })));
}

#[test]
fn read_limited_checks_the_size_before_reading() {
    let t = tempfile::tempdir().unwrap();
    let d = DataDir::open_or_create(&t.path().join("data"), edr_datadir::agent_uid()).unwrap();
    let f = std::fs::File::create(d.join("big.edrpack")).unwrap();
    f.set_len(3 << 30).unwrap();
    match d.read_limited("big.edrpack", 64 << 20) {
        Err(DataDirError::TooLarge { size, limit, .. }) => assert_eq!((size, limit), (3 << 30, 64 << 20)),
        other => panic!("{other:?}"),
    }
    std::fs::write(d.join("small"), b"hello").unwrap();
    assert_eq!(d.read_limited("small", 5).unwrap().unwrap(), b"hello");
    assert!(d.read_limited("missing", 5).unwrap().is_none());
}
