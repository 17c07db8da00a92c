//! The disk spool on its own: order, resume, segment deletion, damage.

use edr_output::spool::{Spool, SpoolOptions, MAX_RECORD, RECORD_HEADER};
use edr_output::OutputError;
use std::path::Path;
use std::time::{Duration, Instant};

fn small(dir: &Path) -> Spool {
    Spool::open(dir, "test spool", SpoolOptions { max_bytes: 1 << 20, segment_bytes: 1024 }).unwrap()
}

fn doc(id: u64) -> String {
    serde_json::json!({"id": id, "pad": "y".repeat(80)}).to_string()
}

fn segments(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".seg")).count()
}

fn ids(records: &[edr_output::spool::Record]) -> Vec<u64> {
    records.iter().map(|r| r.id).collect()
}

#[test]
fn resumes_after_reopen_and_deletes_delivered_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    {
        let s = small(&dir);
        for id in 1..=50 {
            s.append(id, &doc(id)).unwrap();
        }
        assert!(segments(&dir) >= 5, "{} segments", segments(&dir));
        let batch = s.read(20, usize::MAX).unwrap();
        assert_eq!(ids(&batch), (1..=20).collect::<Vec<_>>());
        assert_eq!(batch[0].json, doc(1));
        s.commit(&batch).unwrap();
        assert_eq!(s.queued(), 30);
    }
    let s = small(&dir);
    assert_eq!(s.queued(), 30, "counted again at open");
    let rest = s.read(1000, usize::MAX).unwrap();
    assert_eq!(ids(&rest), (21..=50).collect::<Vec<_>>(), "nothing delivered twice, nothing lost");
    s.commit(&rest).unwrap();
    assert_eq!((s.queued(), s.queued_bytes()), (0, 0));
    assert_eq!(segments(&dir), 1, "only the segment being appended to is left");
    s.append(51, &doc(51)).unwrap();
    assert_eq!(ids(&s.read(10, usize::MAX).unwrap()), vec![51]);
}

#[test]
fn read_respects_the_byte_limit_but_returns_at_least_one() {
    let tmp = tempfile::tempdir().unwrap();
    let s = small(tmp.path());
    for id in 1..=5 {
        s.append(id, &doc(id)).unwrap();
    }
    let one = doc(1).len();
    assert_eq!(s.read(10, 1).unwrap().len(), 1);
    assert_eq!(s.read(10, one * 2).unwrap().len(), 2);
    assert_eq!(s.read(3, usize::MAX).unwrap().len(), 3);
}

#[test]
fn full_and_too_large() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Spool::open(tmp.path(), "test spool", SpoolOptions { max_bytes: 1000, segment_bytes: 400 }).unwrap();
    let json = "x".repeat(200 - RECORD_HEADER);
    for id in 1..=5 {
        s.append(id, &json).unwrap();
    }
    assert!(matches!(s.append(6, &json), Err(OutputError::SpoolFull { id: 6, queued_bytes: 1000, max_bytes: 1000, .. })));
    let b = s.read(2, usize::MAX).unwrap();
    s.commit(&b).unwrap();
    s.append(6, &json).unwrap();
    let huge = "z".repeat(MAX_RECORD + 1);
    assert!(matches!(s.append(7, &huge), Err(OutputError::TooLarge { id: 7, .. })));
}

#[test]
fn corrupt_record_in_a_closed_segment_is_set_aside() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    {
        let s = small(&dir);
        for id in 1..=30 {
            s.append(id, &doc(id)).unwrap();
        }
    }
    // Flip a payload byte of the second record of the first segment.
    let seg1 = dir.join("00000000000000000001.seg");
    let mut bytes = std::fs::read(&seg1).unwrap();
    let rec = RECORD_HEADER + doc(1).len();
    bytes[rec + RECORD_HEADER + 5] ^= 0xff;
    let per_segment = bytes.len() / rec;
    std::fs::write(&seg1, &bytes).unwrap();

    let s = small(&dir);
    let corrupt: Vec<_> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with("corrupt-")).collect();
    assert_eq!(corrupt, vec![format!("corrupt-1-{rec}.bin")]);
    let got = ids(&s.read(1000, usize::MAX).unwrap());
    let mut want = vec![1];
    want.extend(per_segment as u64 + 1..=30);
    assert_eq!(got, want, "alert 1, then everything after the damaged segment");
    assert_eq!(s.queued(), want.len() as u64);
}

#[test]
fn unreadable_commit_file_delivers_again_rather_than_losing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    {
        let s = small(&dir);
        for id in 1..=4 {
            s.append(id, &doc(id)).unwrap();
        }
        let b = s.read(2, usize::MAX).unwrap();
        s.commit(&b).unwrap();
    }
    std::fs::write(dir.join("committed"), "garbage").unwrap();
    let s = small(&dir);
    assert_eq!(ids(&s.read(10, usize::MAX).unwrap()), vec![1, 2, 3, 4]);
}

#[test]
fn commit_inside_a_record_resumes_at_that_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    {
        let s = small(&dir);
        for id in 1..=4 {
            s.append(id, &doc(id)).unwrap();
        }
    }
    let rec = RECORD_HEADER + doc(1).len();
    std::fs::write(dir.join("committed"), format!("v1 1 {}\n", rec + 3)).unwrap();
    let s = small(&dir);
    assert_eq!(ids(&s.read(10, usize::MAX).unwrap()), vec![2, 3, 4]);
    assert_eq!(s.queued(), 3);
}

#[test]
fn one_owner_per_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let _first = small(tmp.path());
    let started = Instant::now();
    let err = Spool::open(tmp.path(), "test spool", SpoolOptions::with_max_bytes(1 << 20)).unwrap_err().to_string();
    assert!(err.contains("in use by another output"), "{err}");
    assert!(started.elapsed() >= Duration::from_secs(4), "waited for the owner to go");
}

#[test]
fn files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let s = small(&dir);
    s.append(1, "{}").unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("00000000000000000001.seg")), 0o600);
}

#[test]
fn damage_inside_the_last_segment_is_kept_not_silently_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    {
        let s = small(&dir);
        for id in 1..=3 {
            s.append(id, &doc(id)).unwrap();
        }
    }
    let seg = dir.join("00000000000000000001.seg");
    let mut bytes = std::fs::read(&seg).unwrap();
    let rec = RECORD_HEADER + doc(1).len();
    bytes[rec + RECORD_HEADER + 1] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();
    let s = small(&dir);
    assert_eq!(ids(&s.read(10, usize::MAX).unwrap()), vec![1]);
    let saved = std::fs::read(dir.join(format!("corrupt-1-{rec}.bin"))).unwrap();
    assert_eq!(saved.len(), 2 * rec, "the damaged record and the one after it are kept for inspection");
}
