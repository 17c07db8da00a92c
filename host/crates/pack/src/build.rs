//! Publisher side: building a pack archive from a directory, and signing it.

use std::fs;
use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::archive;
use crate::error::PackError;
use crate::keys::SecretKey;
use crate::manifest::{Manifest, Mode, MANIFEST_FILE};
use crate::verify::{self, archive_file_name, signature_path, DEFAULT_MAX_ARCHIVE_BYTES, DEFAULT_MAX_FILES, DEFAULT_MAX_UNPACKED_BYTES};

use crate::manifest::MAX_MANIFEST_BYTES;
/// Longest note `sign` accepts in the trusted comment.
const MAX_NOTE_CHARS: usize = 1024;

/// What [`build`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltPack {
    /// The archive, `<out_dir>/<id>-<version>.edrpack`.
    pub path: PathBuf,
    /// The final manifest written into the archive (every hash filled in).
    pub manifest: Manifest,
    /// Lower-case hex SHA-256 of the archive file.
    pub archive_sha256: String,
    /// Size of the archive file.
    pub archive_bytes: u64,
    /// Total size of the files inside (manifest included).
    pub unpacked_bytes: u64,
}

/// Builds the pack described by `dir/pack.toml` into
/// `out_dir/<id>-<version>.edrpack` (creating `out_dir`, replacing an
/// existing archive of that name atomically).
///
/// The manifest may be a template: an empty or absent `sha256` is computed
/// from the file; a filled-in one must match the file. The archive holds the
/// final manifest (canonical TOML, every hash pinned) and every file it
/// names, read from `dir`; files in `dir` that the manifest does not name are
/// not included. The output is deterministic (see FORMAT.md), so rebuilding
/// unchanged inputs gives the same bytes and an existing signature stays valid.
/// A pack that agents with the default limits would refuse is an error.
pub fn build(dir: &Path, out_dir: &Path) -> Result<BuiltPack, PackError> {
    let manifest_path = dir.join(MANIFEST_FILE);
    let template = read_limited(&manifest_path, MAX_MANIFEST_BYTES)?;
    let template = String::from_utf8(template).map_err(|_| PackError::Manifest { path: manifest_path.clone(), message: "not UTF-8 text".into() })?;
    let mut manifest = Manifest::parse(&template, Mode::Template).map_err(|message| PackError::Manifest { path: manifest_path.clone(), message })?;

    // Read every named file and pin (or check) its hash.
    let mut contents: Vec<(String, Vec<u8>)> = Vec::new();
    let mut unpacked: u64 = 0;
    let mut pin = |rel: &str, pinned: &mut String| -> Result<(), PackError> {
        let path = dir.join(rel);
        let remaining = DEFAULT_MAX_UNPACKED_BYTES.saturating_sub(unpacked);
        let data = read_limited(&path, remaining).map_err(|e| match e {
            PackError::ExceedsLimits { .. } => {
                PackError::ExceedsLimits { message: format!("with `{rel}` the pack unpacks to more than {DEFAULT_MAX_UNPACKED_BYTES} bytes") }
            }
            other => other,
        })?;
        unpacked += data.len() as u64;
        let actual = hex::encode(Sha256::digest(&data));
        if pinned.is_empty() {
            *pinned = actual;
        } else if *pinned != actual {
            return Err(PackError::PinnedHashMismatch { file: rel.to_string(), pinned: pinned.clone(), actual });
        }
        contents.push((rel.to_string(), data));
        Ok(())
    };
    for p in &mut manifest.plugins {
        pin(&p.file, &mut p.sha256)?;
    }
    for d in &mut manifest.data {
        pin(&d.path, &mut d.sha256)?;
    }

    // The final manifest must itself be valid and round-trip exactly.
    let text = manifest.to_toml();
    let reparsed = Manifest::parse(&text, Mode::Final)
        .map_err(|message| PackError::Manifest { path: manifest_path.clone(), message: format!("the final manifest is invalid: {message}") })?;
    if reparsed != manifest {
        return Err(PackError::Manifest { path: manifest_path, message: "the final manifest does not read back identically (a bug in edr-pack)".into() });
    }
    let unpacked_bytes = unpacked + text.len() as u64;
    if unpacked_bytes > DEFAULT_MAX_UNPACKED_BYTES {
        return Err(PackError::ExceedsLimits {
            message: format!("the pack unpacks to {unpacked_bytes} bytes, agents accept {DEFAULT_MAX_UNPACKED_BYTES} by default"),
        });
    }
    if contents.len() + 1 > DEFAULT_MAX_FILES {
        return Err(PackError::ExceedsLimits { message: format!("the pack has {} files, agents accept {DEFAULT_MAX_FILES} by default", contents.len() + 1) });
    }

    // pack.toml first, then the rest sorted by path.
    contents.sort_by(|a, b| a.0.cmp(&b.0));
    let mut entries: Vec<(&str, &[u8])> = vec![(MANIFEST_FILE, text.as_bytes())];
    entries.extend(contents.iter().map(|(p, d)| (p.as_str(), d.as_slice())));
    let tar = archive::write_tar(&entries).map_err(|e| PackError::io("cannot assemble the tar for", dir, e))?;
    let compressed = archive::compress(&tar).map_err(|e| PackError::io("cannot compress the pack from", dir, e))?;
    if compressed.len() as u64 > DEFAULT_MAX_ARCHIVE_BYTES {
        return Err(PackError::ExceedsLimits {
            message: format!("the archive is {} bytes, agents accept {DEFAULT_MAX_ARCHIVE_BYTES} by default", compressed.len()),
        });
    }

    fs::create_dir_all(out_dir).map_err(|e| PackError::io("cannot create directory", out_dir, e))?;
    let out = out_dir.join(archive_file_name(&manifest.id, &manifest.version));
    write_atomic(&out, &compressed)?;
    let archive_sha256 = hex::encode(Sha256::digest(&compressed));
    tracing::info!(pack = %manifest.id, version = %manifest.version, path = %out.display(), bytes = compressed.len(), unpacked_bytes, "built pack");
    Ok(BuiltPack { path: out, manifest, archive_sha256, archive_bytes: compressed.len() as u64, unpacked_bytes })
}

/// Signs the pack archive at `archive` with `key`, writing the detached
/// minisign signature `<archive>.minisig` (replacing an existing one).
///
/// The archive must be a well-formed pack (it is read with the default
/// limits and its manifest and hashes are checked), so a broken pack is not
/// signed by mistake. The trusted comment records the pack id and version,
/// tab-separated, as FORMAT.md describes; `note`, if given, is appended as
/// `note:<text>` (one line, no control characters). Returns the signature's
/// path.
pub fn sign(archive: &Path, key: &SecretKey, note: Option<&str>) -> Result<PathBuf, PackError> {
    if let Some(note) = note {
        if note.chars().any(char::is_control) {
            return Err(PackError::InvalidComment { why: "the note must be one line without tabs or other control characters" });
        }
        if note.chars().count() > MAX_NOTE_CHARS {
            return Err(PackError::InvalidComment { why: "the note must be at most 1024 characters" });
        }
    }
    let bytes = read_limited(archive, DEFAULT_MAX_ARCHIVE_BYTES)?;
    let manifest = verify::check_unsigned(&bytes).map_err(|reason| PackError::NotAPack { path: archive.to_path_buf(), reason })?;

    let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let file_name = archive.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut trusted = format!("timestamp:{timestamp}\tfile:{file_name}\tpack:{}\tversion:{}", manifest.id, manifest.version);
    if let Some(note) = note {
        trusted.push_str("\tnote:");
        trusted.push_str(note);
    }
    let untrusted = format!("signature from edr-pack key {}", key.key_id());
    let sig_box = minisign::sign(Some(&key.public.inner), &key.inner, Cursor::new(&bytes), Some(&trusted), Some(&untrusted))
        .map_err(|e| PackError::Crypto { action: "signing failed", message: e.to_string() })?;
    let sig_path = signature_path(archive);
    write_atomic(&sig_path, sig_box.into_string().as_bytes())?;
    tracing::info!(pack = %manifest.id, version = %manifest.version, key_id = %key.key_id(), signature = %sig_path.display(), "signed pack");
    Ok(sig_path)
}

/// Reads a whole file, refusing one bigger than `limit` (`ExceedsLimits`).
fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, PackError> {
    let file = fs::File::open(path).map_err(|e| PackError::io("cannot read", path, e))?;
    let meta = file.metadata().map_err(|e| PackError::io("cannot read", path, e))?;
    if !meta.is_file() {
        return Err(PackError::io("cannot read", path, std::io::Error::other("not a regular file")));
    }
    if meta.len() > limit {
        return Err(PackError::ExceedsLimits { message: format!("{} is {} bytes, more than the {limit} allowed", path.display(), meta.len()) });
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1).read_to_end(&mut data).map_err(|e| PackError::io("cannot read", path, e))?;
    if data.len() as u64 > limit {
        return Err(PackError::ExceedsLimits { message: format!("{} grew past {limit} bytes while being read", path.display()) });
    }
    Ok(data)
}

/// Writes `bytes` to a temporary file next to `path`, syncs it, and renames
/// it over `path`, so readers never see a partial file.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PackError> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        PackError::io("cannot write", path, e)
    })
}
