//! ELF headers, read as the kernel reads them for an exec: where the
//! program header table is, and which loader the program names
//! (`PT_INTERP`). Pure: the caller reads the bytes (see
//! [`super::exec_paths`]); both classes and both byte orders.

/// `PT_INTERP`.
const PT_INTERP: u64 = 3;

/// The kernel refuses program header tables over 64 KiB.
const MAX_TABLE: u64 = 65_536;

/// Longest `PT_INTERP` accepted (the kernel's limit is `PATH_MAX`).
const MAX_INTERP: u64 = 4096;

/// Why an ELF header (or its program header table) is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ElfError {
    /// The `\x7fELF` magic is missing.
    #[error("not an ELF file (no \\x7fELF magic)")]
    NotElf,
    /// The bytes end before the field that was needed.
    #[error("ELF header truncated: {need} bytes needed, {have} read")]
    Truncated { need: usize, have: usize },
    /// `EI_CLASS` is neither 32- nor 64-bit.
    #[error("ELF class {0} is neither ELFCLASS32 (1) nor ELFCLASS64 (2)")]
    Class(u8),
    /// `EI_DATA` is neither little- nor big-endian.
    #[error("ELF data encoding {0} is neither little-endian (1) nor big-endian (2)")]
    Endian(u8),
    /// The program header table's entry size or total size is out of range.
    #[error("ELF program header table of {phnum} entries of {phentsize} bytes is out of range")]
    Table { phentsize: u16, phnum: u16 },
    /// `PT_INTERP` names a string of an impossible length.
    #[error("ELF PT_INTERP of {0} bytes is out of range (2..=4096)")]
    Interp(u64),
}

/// What the ELF header says about the program header table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// ELFCLASS64.
    pub class64: bool,
    /// Little-endian.
    pub le: bool,
    /// `e_phoff`.
    pub phoff: u64,
    /// `e_phentsize`.
    pub phentsize: u16,
    /// `e_phnum`.
    pub phnum: u16,
}

impl Header {
    /// Reads the header from the file's first bytes.
    pub fn parse(head: &[u8]) -> Result<Header, ElfError> {
        if !head.starts_with(b"\x7fELF") {
            return Err(if head.len() < 4 && b"\x7fELF".starts_with(head) { ElfError::Truncated { need: 4, have: head.len() } } else { ElfError::NotElf });
        }
        let class64 = match byte(head, 4)? {
            1 => false,
            2 => true,
            c => return Err(ElfError::Class(c)),
        };
        let le = match byte(head, 5)? {
            1 => true,
            2 => false,
            d => return Err(ElfError::Endian(d)),
        };
        let mut h = Header { class64, le, phoff: 0, phentsize: 0, phnum: 0 };
        let (phoff, phent, phnum) = if class64 { (h.uint(head, 0x20, 8)?, 0x36, 0x38) } else { (h.uint(head, 0x1c, 4)?, 0x2a, 0x2c) };
        h.phoff = phoff;
        h.phentsize = h.uint(head, phent, 2)? as u16;
        h.phnum = h.uint(head, phnum, 2)? as u16;
        Ok(h)
    }

    /// The program header table: its offset and size, checked as the kernel checks it.
    pub fn table(&self) -> Result<(u64, usize), ElfError> {
        let min_ent = if self.class64 { 56 } else { 32 };
        let size = u64::from(self.phentsize) * u64::from(self.phnum);
        if self.phentsize < min_ent || size == 0 || size > MAX_TABLE {
            return Err(ElfError::Table { phentsize: self.phentsize, phnum: self.phnum });
        }
        Ok((self.phoff, size as usize))
    }

    /// The offset and length of the first `PT_INTERP`'s string in the table
    /// `table` (as [`Header::table`] locates it), `None` when there is none
    /// (a static program or a loader).
    pub fn interp(&self, table: &[u8]) -> Result<Option<(u64, usize)>, ElfError> {
        for ph in table.chunks_exact(usize::from(self.phentsize.max(1))) {
            if self.uint(ph, 0, 4)? != PT_INTERP {
                continue;
            }
            let (off, len) = if self.class64 { (self.uint(ph, 8, 8)?, self.uint(ph, 0x20, 8)?) } else { (self.uint(ph, 4, 4)?, self.uint(ph, 0x10, 4)?) };
            if !(2..=MAX_INTERP).contains(&len) {
                return Err(ElfError::Interp(len));
            }
            return Ok(Some((off, len as usize)));
        }
        Ok(None)
    }

    /// An unsigned field of `n` bytes at `o`, in the file's byte order.
    fn uint(&self, b: &[u8], o: usize, n: usize) -> Result<u64, ElfError> {
        let need = o + n;
        let bytes = b.get(o..need).ok_or(ElfError::Truncated { need, have: b.len() })?;
        let fold = |v: u64, x: &u8| (v << 8) | u64::from(*x);
        Ok(if self.le { bytes.iter().rev().fold(0, fold) } else { bytes.iter().fold(0, fold) })
    }
}

fn byte(b: &[u8], o: usize) -> Result<u8, ElfError> {
    b.get(o).copied().ok_or(ElfError::Truncated { need: o + 1, have: b.len() })
}

/// The loader's path from the `PT_INTERP` bytes: up to the first NUL.
pub(crate) fn interp_path(raw: &[u8]) -> String {
    let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 64-bit little-endian header with `phnum` entries of 56 bytes at 64.
    fn elf64le(phnum: u16) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&phnum.to_le_bytes());
        b
    }

    #[test]
    fn a_64_bit_little_endian_header() {
        let h = Header::parse(&elf64le(3)).unwrap();
        assert_eq!(h, Header { class64: true, le: true, phoff: 64, phentsize: 56, phnum: 3 });
        assert_eq!(h.table(), Ok((64, 168)));
    }

    #[test]
    fn truncated_headers() {
        let b = elf64le(3);
        assert_eq!(Header::parse(&b[..2]), Err(ElfError::Truncated { need: 4, have: 2 }));
        assert_eq!(Header::parse(&b[..4]), Err(ElfError::Truncated { need: 5, have: 4 }));
        assert_eq!(Header::parse(&b[..6]), Err(ElfError::Truncated { need: 0x28, have: 6 }));
        assert_eq!(Header::parse(&b[..0x37]), Err(ElfError::Truncated { need: 0x38, have: 0x37 }));
        assert_eq!(Header::parse(b""), Err(ElfError::Truncated { need: 4, have: 0 }));
    }

    #[test]
    fn wrong_magic_class_or_encoding() {
        assert_eq!(Header::parse(b"MZ\x90\x00\x03\x00"), Err(ElfError::NotElf));
        let mut b = elf64le(1);
        b[4] = 3;
        assert_eq!(Header::parse(&b), Err(ElfError::Class(3)));
        b[4] = 0;
        assert_eq!(Header::parse(&b), Err(ElfError::Class(0)));
        let mut b = elf64le(1);
        b[5] = 7;
        assert_eq!(Header::parse(&b), Err(ElfError::Endian(7)));
    }

    #[test]
    fn a_32_bit_big_endian_header_and_its_interp() {
        let mut b = vec![0u8; 52];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 1;
        b[5] = 2;
        b[0x1c..0x20].copy_from_slice(&0x0102_0304u32.to_be_bytes());
        b[0x2a..0x2c].copy_from_slice(&32u16.to_be_bytes());
        b[0x2c..0x2e].copy_from_slice(&2u16.to_be_bytes());
        let h = Header::parse(&b).unwrap();
        assert_eq!(h, Header { class64: false, le: false, phoff: 0x0102_0304, phentsize: 32, phnum: 2 });
        // Read as little-endian the offset would differ: the byte order is honoured.
        assert_eq!(h.table(), Ok((0x0102_0304, 64)));
        let mut table = vec![0u8; 64];
        table[..4].copy_from_slice(&1u32.to_be_bytes()); // PT_LOAD
        table[32..36].copy_from_slice(&3u32.to_be_bytes()); // PT_INTERP
        table[36..40].copy_from_slice(&2800u32.to_be_bytes());
        table[48..52].copy_from_slice(&13u32.to_be_bytes());
        assert_eq!(h.interp(&table), Ok(Some((2800, 13))));
        table[32..36].copy_from_slice(&1u32.to_be_bytes());
        assert_eq!(h.interp(&table), Ok(None), "static: no PT_INTERP");
    }

    #[test]
    fn program_header_tables_out_of_range() {
        let mut h = Header::parse(&elf64le(0)).unwrap();
        assert_eq!(h.table(), Err(ElfError::Table { phentsize: 56, phnum: 0 }), "empty");
        h.phnum = 2000;
        assert!(h.table().is_err(), "over 64 KiB");
        h.phnum = 1;
        h.phentsize = 32;
        assert!(h.table().is_err(), "entries smaller than Elf64_Phdr");
    }

    #[test]
    fn interp_lengths_out_of_range_and_short_tables() {
        let h = Header::parse(&elf64le(1)).unwrap();
        let mut ph = vec![0u8; 56];
        ph[..4].copy_from_slice(&3u32.to_le_bytes());
        ph[0x20..0x28].copy_from_slice(&1u64.to_le_bytes());
        assert_eq!(h.interp(&ph), Err(ElfError::Interp(1)));
        ph[0x20..0x28].copy_from_slice(&5000u64.to_le_bytes());
        assert_eq!(h.interp(&ph), Err(ElfError::Interp(5000)));
        assert_eq!(h.interp(&ph[..40]), Ok(None), "a partial entry is not read");
        assert_eq!(interp_path(b"/lib/ld.so.1\0junk"), "/lib/ld.so.1");
        assert_eq!(interp_path(b"/no/nul"), "/no/nul");
    }
}
