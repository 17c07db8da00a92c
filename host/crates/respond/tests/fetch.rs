//! Fetch copies a file byte-exact into the evidence store.

mod common;

use common::*;
use edr_respond::{Decision, Outcome, ResponseAction};
use std::fs;
use std::os::unix::fs::MetadataExt;

#[test]
fn fetch_copies_byte_exact_with_its_sha256() {
    let work = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let (r, recs) = responder_with(store.path(), |_| {});
    let file = work.path().join("suspicious.elf");
    let content: Vec<u8> = (0..300_001u32).map(|i| (i * 7 + i / 255) as u8).collect();
    fs::write(&file, &content).unwrap();
    let before = fs::metadata(&file).unwrap();
    let sha = sha256_of(&file);

    let rec = r.request(operator(), ResponseAction::Fetch(file.clone()), "triage");
    assert_eq!(rec.decision, Decision::Enforced, "{rec:?}");
    assert_eq!(rec.outcome, Outcome::Ok, "{rec:?}");
    assert_eq!(rec.detail["sha256"], sha);
    assert_eq!(rec.detail["size"], content.len().to_string());

    let ev = r.evidence();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].sha256, sha);
    assert_eq!(ev[0].original_path, file);
    assert_eq!(ev[0].reason, "triage");
    assert_eq!(fs::read(&ev[0].stored_path).unwrap(), content, "byte-exact copy");
    assert_eq!(sha256_of(&ev[0].stored_path), sha);
    assert_eq!(fs::metadata(&ev[0].stored_path).unwrap().mode() & 0o7777, 0o400);
    let sidecar = ev[0].stored_path.with_extension("json");
    let json: serde_json::Value = serde_json::from_slice(&fs::read(sidecar).unwrap()).unwrap();
    assert_eq!(json["sha256"], sha.as_str());
    assert_eq!(json["meta"]["mtime_sec"], before.mtime());

    // The original is untouched.
    assert_eq!(fs::read(&file).unwrap(), content);
    assert_eq!(fs::metadata(&file).unwrap().mtime(), before.mtime());
    assert_eq!(recs.lock().unwrap().len(), 1);
}

#[test]
fn fetch_refuses_non_regular_files() {
    let store = tempfile::tempdir().unwrap();
    let (r, _) = responder_with(store.path(), |_| {});
    for p in ["/dev/zero", "/etc"] {
        let rec = r.request(operator(), ResponseAction::Fetch(p.into()), "");
        assert_eq!(rec.decision, Decision::Refused, "{p}: {rec:?}");
        assert!(rec.refusal.as_deref().unwrap().contains("not a regular file"), "{rec:?}");
    }
    assert!(r.evidence().is_empty());
}
