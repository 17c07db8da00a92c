//! Following a growing log file across rotation and truncation.
//!
//! * rotation (the path now names another inode: `mv` + new file, as
//!   logrotate does by default): the rest of the old file is read to its
//!   end through the still-open descriptor, then the new file from its start;
//! * truncation (`copytruncate`, `> file`): the file is read again from its
//!   start (noticed when the file is shorter than what was read: lines
//!   written after a truncation and before the next poll that make it longer
//!   again than before are partly skipped);
//! * a missing file is waited for and then read from its start.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A followed file.
#[derive(Debug)]
pub(crate) struct Tail {
    path: PathBuf,
    file: Option<File>,
    id: (u64, u64),
    offset: u64,
}

impl Tail {
    /// Follows `path` from its current end (history is not replayed).
    pub fn at_end(path: &Path) -> Tail {
        let mut t = Tail { path: path.to_path_buf(), file: None, id: (0, 0), offset: 0 };
        if let Ok(f) = File::open(path) {
            if let Ok(md) = f.metadata() {
                t.id = (md.dev(), md.ino());
                t.offset = md.len();
                t.file = Some(f);
            }
        }
        t
    }

    /// Follows `path` from its start (a file that appeared after start-up).
    pub fn from_start(path: &Path) -> Tail {
        Tail { path: path.to_path_buf(), file: None, id: (0, 0), offset: 0 }
    }

    /// The followed path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file is open.
    pub fn is_open(&self) -> bool {
        self.file.is_some()
    }

    /// Bytes appended since the last call (after a rotation: the old file's
    /// tail, then the new file's content).
    pub fn read_new(&mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let current = std::fs::metadata(&self.path).ok().map(|m| (m.dev(), m.ino()));
        if self.file.is_some() && current.is_some() && current != Some(self.id) {
            // Rotated: finish the old file, then switch.
            self.read_open(&mut out)?;
            self.file = None;
        }
        if self.file.is_none() {
            let Ok(f) = File::open(&self.path) else {
                return Ok(out);
            };
            let md = f.metadata()?;
            self.id = (md.dev(), md.ino());
            self.offset = 0;
            self.file = Some(f);
        }
        self.read_open(&mut out)?;
        Ok(out)
    }

    fn read_open(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        let Some(f) = self.file.as_mut() else {
            return Ok(());
        };
        let len = f.metadata()?.len();
        if len < self.offset {
            tracing::info!(path = %self.path.display(), "log truncated; reading it from the start");
            self.offset = 0;
        }
        if len == self.offset {
            return Ok(());
        }
        f.seek(SeekFrom::Start(self.offset))?;
        // Bounded: a huge burst is read over several polls.
        let n = f.take(8 << 20).read_to_end(out)?;
        self.offset += n as u64;
        Ok(())
    }
}

/// Splits appended bytes into complete lines, keeping a partial last line.
#[derive(Debug, Default)]
pub(crate) struct Lines {
    pending: Vec<u8>,
}

impl Lines {
    /// Feeds bytes; returns the lines they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(i) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=i).collect();
            out.push(String::from_utf8_lossy(&line[..line.len() - 1]).into_owned());
        }
        if self.pending.len() > 64 * 1024 {
            // A "line" this long is not a log line: drop it.
            self.pending.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn append(p: &Path, s: &str) {
        std::fs::OpenOptions::new().create(true).append(true).open(p).unwrap().write_all(s.as_bytes()).unwrap();
    }

    #[test]
    fn follows_appends_rotation_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("auth.log");
        append(&p, "old history\n");
        let mut t = Tail::at_end(&p);
        let mut lines = Lines::default();
        assert!(t.read_new().unwrap().is_empty(), "history is not replayed");
        append(&p, "one\ntw");
        assert_eq!(lines.feed(&t.read_new().unwrap()), vec!["one"]);
        append(&p, "o\n");
        assert_eq!(lines.feed(&t.read_new().unwrap()), vec!["two"]);
        // logrotate: rename, a last line into the old file, then a new file.
        std::fs::rename(&p, dir.path().join("auth.log.1")).unwrap();
        append(&dir.path().join("auth.log.1"), "late in old\n");
        assert_eq!(lines.feed(&t.read_new().unwrap()), vec!["late in old"], "new file not there yet");
        append(&p, "first in new\n");
        assert_eq!(lines.feed(&t.read_new().unwrap()), vec!["first in new"]);
        // copytruncate (seen before the file grows past the old offset again).
        std::fs::OpenOptions::new().write(true).truncate(true).open(&p).unwrap();
        assert!(t.read_new().unwrap().is_empty());
        append(&p, "after truncate\n");
        assert_eq!(lines.feed(&t.read_new().unwrap()), vec!["after truncate"]);
        // Deleted, then recreated.
        std::fs::remove_file(&p).unwrap();
        assert!(t.read_new().unwrap().is_empty());
        append(&p, "recreated\n");
        assert_eq!(lines.feed(&t.read_new().unwrap()), vec!["recreated"]);
    }

    #[test]
    fn waits_for_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secure");
        let mut t = Tail::at_end(&p);
        assert!(!t.is_open());
        assert!(t.read_new().unwrap().is_empty());
        append(&p, "hello\n");
        assert_eq!(t.read_new().unwrap(), b"hello\n");
        assert!(t.is_open());
    }
}
