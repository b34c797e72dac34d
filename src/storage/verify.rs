//! Finding which table file of a space holds a block that fails its checksum.
//!
//! fjall checks every block it reads but its error does not name the file. A table file
//! starts with its blocks one after another, each a header (magic `LSM\x03`, block type,
//! the data's 128-bit xxh3, the data's length on disk, its length uncompressed, a header
//! checksum) and then the data. This walks those blocks and reports the first whose data
//! does not match its checksum. It is used only to name a file once a read has already
//! failed: a file it cannot walk gets no verdict, so it can never make a good store look
//! damaged.

use std::io::Read;
use std::path::{Path, PathBuf};

const MAGIC: [u8; 4] = [b'L', b'S', b'M', 3];
/// magic, block type, data checksum (u128), on-disk length, uncompressed length, header
/// checksum (u32).
const HEADER_BYTES: usize = 4 + 1 + 16 + 4 + 4 + 4;

/// The first block of `file` whose data fails its checksum, as its byte offset.
pub fn damaged_block(file: &Path) -> std::io::Result<Option<u64>> {
    let mut bytes = Vec::new();
    std::fs::File::open(file)?.read_to_end(&mut bytes)?;
    let mut at = 0usize;
    while let Some(header) = bytes.get(at..at + HEADER_BYTES) {
        if header[..4] != MAGIC {
            return Ok(None);
        }
        let checksum = u128::from_le_bytes(header[5..21].try_into().expect("16 bytes"));
        let length = u32::from_le_bytes(header[21..25].try_into().expect("4 bytes")) as usize;
        let Some(data) = bytes.get(at + HEADER_BYTES..at + HEADER_BYTES + length) else {
            // A length past the end: the header itself is damaged.
            return Ok(Some(at as u64));
        };
        if xxhash_rust::xxh3::xxh3_128(data) != checksum {
            return Ok(Some(at as u64));
        }
        at += HEADER_BYTES + length;
    }
    Ok(None)
}

/// Table files under a keyspace folder, each with the offset of its damaged block.
pub fn damaged_tables(keyspace: &Path) -> Vec<(PathBuf, u64)> {
    let Ok(entries) = std::fs::read_dir(keyspace.join("tables")) else {
        return Vec::new();
    };
    let mut damaged = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if let Ok(Some(offset)) = damaged_block(&path) {
            damaged.push((path, offset));
        }
    }
    damaged.sort();
    damaged
}
