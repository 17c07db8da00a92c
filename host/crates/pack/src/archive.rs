//! The archive container: a deterministic tar writer and a bounded, strict
//! tar reader (zstd-compressed or plain).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::{self, Read};
use std::rc::Rc;

use tar::EntryType;

use crate::error::Rejection;
use crate::manifest::{MANIFEST_FILE, MAX_MANIFEST_BYTES};

/// The zstd frame magic number, little-endian `0xFD2FB528`.
pub(crate) const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
/// The zstd level the builder uses.
pub(crate) const ZSTD_LEVEL: i32 = 19;
/// Largest zstd window the reader accepts: 2^25 bytes (32 MiB).
pub(crate) const ZSTD_WINDOW_LOG_MAX: u32 = 25;
/// Bytes of tar structure (headers, long-name records, padding) allowed per
/// entry on top of the file bytes when counting the decompressed stream.
const TAR_OVERHEAD_PER_ENTRY: u64 = 4096;
/// Fixed allowance for the end-of-archive blocks and slack.
const TAR_OVERHEAD_FIXED: u64 = 64 * 1024;

/// Limits applied while reading an archive.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadLimits {
    pub max_unpacked_bytes: u64,
    pub max_files: usize,
}

/// Writes the deterministic tar: `files` in the order given, GNU headers,
/// mode 0644, uid/gid 0, no owner names, mtime 0.
pub(crate) fn write_tar(files: &[(&str, &[u8])]) -> io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(EntryType::Regular);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(data.len() as u64);
        // append_data sets the path (with a GNU long-name record when
        // needed) and the checksum.
        builder.append_data(&mut header, path, *data)?;
    }
    builder.into_inner()
}

/// Compresses with zstd at [`ZSTD_LEVEL`], with a content checksum.
pub(crate) fn compress(tar: &[u8]) -> io::Result<Vec<u8>> {
    let mut c = zstd::bulk::Compressor::new(ZSTD_LEVEL)?;
    c.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
    // Keep the window within what every reader accepts, whatever the size.
    c.set_parameter(zstd::zstd_safe::CParameter::WindowLog(ZSTD_WINDOW_LOG_MAX.min(23)))?;
    c.compress(tar)
}

/// A reader that counts bytes and fails once more than `cap` were read,
/// recording that it did so the caller can tell a bomb from corruption.
struct CappedReader<R> {
    inner: R,
    read: u64,
    cap: u64,
    tripped: Rc<Cell<bool>>,
}

impl<R: Read> Read for CappedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.read >= self.cap {
            // Allow a zero-length probe at exactly the cap, refuse anything more.
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? == 0 {
                return Ok(0);
            }
            self.tripped.set(true);
            return Err(io::Error::other("decompressed stream exceeds the limit"));
        }
        let room = (self.cap - self.read).min(buf.len() as u64) as usize;
        let n = self.inner.read(&mut buf[..room])?;
        self.read += n as u64;
        Ok(n)
    }
}

/// Reads every regular file of the archive into memory, enforcing the entry
/// rules of FORMAT.md and the limits. Returns files by normalised path.
pub(crate) fn read_files(bytes: &[u8], limits: ReadLimits) -> Result<BTreeMap<String, Vec<u8>>, Rejection> {
    let tripped = Rc::new(Cell::new(false));
    let stream_cap = limits
        .max_unpacked_bytes
        .saturating_add((limits.max_files as u64).saturating_add(1).saturating_mul(TAR_OVERHEAD_PER_ENTRY))
        .saturating_add(TAR_OVERHEAD_FIXED);
    let source: Box<dyn Read + '_> = if bytes.starts_with(&ZSTD_MAGIC) {
        let mut decoder =
            zstd::stream::read::Decoder::with_buffer(bytes).map_err(|e| Rejection::MalformedArchive { message: format!("cannot start zstd decoding: {e}") })?;
        decoder.window_log_max(ZSTD_WINDOW_LOG_MAX).map_err(|e| Rejection::MalformedArchive { message: format!("cannot configure zstd decoding: {e}") })?;
        Box::new(decoder)
    } else if bytes.len() >= 512 && &bytes[257..262] == b"ustar" {
        Box::new(bytes)
    } else {
        return Err(Rejection::MalformedArchive {
            message: "the file is neither zstd-compressed (magic 28 B5 2F FD) nor a tar archive (`ustar` at offset 257)".into(),
        });
    };
    let capped = CappedReader { inner: source, read: 0, cap: stream_cap, tripped: tripped.clone() };
    let mut archive = tar::Archive::new(capped);

    let bomb = |detail: String| Rejection::DecompressionBomb { limit: limits.max_unpacked_bytes, detail };
    let stream_error = |e: io::Error, what: &str| {
        if tripped.get() {
            bomb(format!("the decompressed stream passed {stream_cap} bytes while {what}"))
        } else {
            Rejection::MalformedArchive { message: format!("{what}: {e}") }
        }
    };

    let mut files = BTreeMap::new();
    let mut entries_seen = 0usize;
    let mut unpacked = 0u64;
    let entries = archive.entries().map_err(|e| stream_error(e, "reading the tar"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| stream_error(e, "reading a tar header"))?;
        entries_seen += 1;
        if entries_seen > limits.max_files {
            return Err(Rejection::TooManyFiles { limit: limits.max_files });
        }
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let kind = entry.header().entry_type();
        let is_dir = match kind {
            EntryType::Regular => false,
            EntryType::Directory => true,
            other => {
                return Err(Rejection::UnsafePath { path: shown, why: format!("{} entries are not allowed", describe_type(other)) });
            }
        };
        let path = normalise_entry_path(&raw_path, is_dir).map_err(|why| Rejection::UnsafePath { path: shown.clone(), why: why.into() })?;
        let size = entry.size();
        if is_dir {
            if size != 0 {
                return Err(Rejection::UnsafePath { path: shown, why: format!("a directory entry carries {size} bytes of data") });
            }
            if files.contains_key(&path) {
                return Err(Rejection::DuplicateEntry { path });
            }
            continue;
        }
        if files.contains_key(&path) {
            return Err(Rejection::DuplicateEntry { path });
        }
        if path == MANIFEST_FILE && size > MAX_MANIFEST_BYTES {
            return Err(Rejection::MalformedManifest {
                message: format!("{MANIFEST_FILE} is {size} bytes, more than the limit of {MAX_MANIFEST_BYTES} bytes (a manifest is a few KiB); refused without reading it, report it to the publisher"),
            });
        }
        let remaining = limits.max_unpacked_bytes - unpacked;
        if size > remaining {
            return Err(bomb(format!("entry `{path}` declares {size} bytes and only {remaining} remain in the budget")));
        }
        // Read at most what the header declares, growing the buffer as data
        // actually arrives (never allocating the declared size up front).
        let mut data = Vec::with_capacity(size.min(64 * 1024) as usize);
        (&mut entry).take(size).read_to_end(&mut data).map_err(|e| stream_error(e, &format!("reading `{path}`")))?;
        if (data.len() as u64) != size {
            return Err(Rejection::MalformedArchive { message: format!("`{path}` is truncated: {} of {size} bytes", data.len()) });
        }
        unpacked += size;
        tracing::trace!(path = %path, size, "read pack entry");
        files.insert(path, data);
    }
    // Past the end-of-archive marker only zero padding may follow (tar's
    // blocking): data hidden there could show up as entries in a more
    // lenient tar reader, so it is refused. The cap still applies.
    let mut rest = archive.into_inner();
    let mut buf = [0u8; 8192];
    loop {
        let n = match rest.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => return Err(stream_error(e, "reading past the end of the tar")),
        };
        if buf[..n].iter().any(|&b| b != 0) {
            return Err(Rejection::MalformedArchive { message: "non-zero data follows the end of the tar archive".into() });
        }
    }
    Ok(files)
}

fn describe_type(t: EntryType) -> String {
    match t {
        EntryType::Symlink => "symbolic link".into(),
        EntryType::Link => "hard link".into(),
        EntryType::Char => "character device".into(),
        EntryType::Block => "block device".into(),
        EntryType::Fifo => "FIFO".into(),
        EntryType::Continuous => "contiguous file".into(),
        EntryType::GNUSparse => "sparse file".into(),
        EntryType::XGlobalHeader => "PAX global header".into(),
        other => format!("tar type `{}`", other.as_byte() as char),
    }
}

/// Normalises an entry path: strips one leading `./` (and a trailing `/` for
/// directories), then refuses anything but plain relative components.
fn normalise_entry_path(raw: &[u8], is_dir: bool) -> Result<String, &'static str> {
    let s = std::str::from_utf8(raw).map_err(|_| "the path is not UTF-8")?;
    if s.is_empty() {
        return Err("the path is empty");
    }
    if s.starts_with('/') {
        return Err("absolute paths are not allowed");
    }
    if s.contains('\0') {
        return Err("the path contains a NUL byte");
    }
    if s.contains('\\') {
        return Err("backslashes are not allowed in paths");
    }
    let mut p = s.strip_prefix("./").unwrap_or(s);
    if is_dir {
        p = p.strip_suffix('/').unwrap_or(p);
        if p.is_empty() {
            // The archive root (`./`).
            return Ok(String::new());
        }
    }
    for component in p.split('/') {
        match component {
            "" => return Err("empty path components (`//`, or a trailing `/` on a file) are not allowed"),
            "." => return Err("`.` components are not allowed"),
            ".." => return Err("`..` components are not allowed"),
            _ => {}
        }
    }
    Ok(p.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths_are_normalised_or_refused() {
        assert_eq!(normalise_entry_path(b"./pack.toml", false).unwrap(), "pack.toml");
        assert_eq!(normalise_entry_path(b"plugins/a.wasm", false).unwrap(), "plugins/a.wasm");
        assert_eq!(normalise_entry_path(b"plugins/", true).unwrap(), "plugins");
        assert_eq!(normalise_entry_path(b"./", true).unwrap(), "");
        assert!(normalise_entry_path(b"../x", false).unwrap_err().contains(".."));
        assert!(normalise_entry_path(b"a/../../x", false).unwrap_err().contains(".."));
        assert!(normalise_entry_path(b"/etc/passwd", false).unwrap_err().contains("absolute"));
        assert!(normalise_entry_path(b"", false).unwrap_err().contains("empty"));
        assert!(normalise_entry_path(b"a//b", false).unwrap_err().contains("empty"));
        assert!(normalise_entry_path(b"a/./b", false).unwrap_err().contains("`.`"));
        assert!(normalise_entry_path(b"a\\b", false).unwrap_err().contains("backslash"));
        assert!(normalise_entry_path(b"\xff", false).unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn capped_reader_stops_at_the_cap_and_says_so() {
        let tripped = Rc::new(Cell::new(false));
        let data = [7u8; 100];
        let mut r = CappedReader { inner: &data[..], read: 0, cap: 60, tripped: tripped.clone() };
        let mut out = Vec::new();
        let err = r.read_to_end(&mut out).unwrap_err();
        assert_eq!(out.len(), 60);
        assert!(err.to_string().contains("exceeds"));
        assert!(tripped.get());

        let tripped = Rc::new(Cell::new(false));
        let mut r = CappedReader { inner: &data[..], read: 0, cap: 100, tripped: tripped.clone() };
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out.len(), 100);
        assert!(!tripped.get());
    }

    #[test]
    fn written_tar_is_deterministic_and_round_trips() {
        let a = write_tar(&[("pack.toml", b"x = 1\n"), ("plugins/p.wasm", b"\0asm")]).unwrap();
        let b = write_tar(&[("pack.toml", b"x = 1\n"), ("plugins/p.wasm", b"\0asm")]).unwrap();
        assert_eq!(a, b);
        let z = compress(&a).unwrap();
        assert!(z.starts_with(&ZSTD_MAGIC));
        let files = read_files(&z, ReadLimits { max_unpacked_bytes: 1 << 20, max_files: 10 }).unwrap();
        assert_eq!(files["pack.toml"], b"x = 1\n");
        assert_eq!(files["plugins/p.wasm"], b"\0asm");
        // The plain tar reads too.
        assert_eq!(read_files(&a, ReadLimits { max_unpacked_bytes: 1 << 20, max_files: 10 }).unwrap(), files);
    }
}
