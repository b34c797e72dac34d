//! The backup file (see `proto/shoal/backup.proto`): written as a stream of chunks by
//! [`Writer`], checked and read back frame by frame by [`Reader`].
//!
//! The file ends as etcd's snapshots do: padded to a multiple of 512 bytes, then the
//! SHA-256 of everything before. `etcdctl snapshot save` refuses a stream whose length
//! is not 32 more than a multiple of 512, and the trailer is what a restore checks the
//! file against.

use crate::proto::shoal::backup::{frame, Frame};
use prost::Message;
use ring::digest;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 8] = b"SHOALBAK";
/// The format this binary writes and the newest it reads.
pub const FORMAT: u32 = 1;
const ALIGN: u64 = 512;
const HASH_BYTES: u64 = 32;
/// A frame larger than this is damage, not data: keys and values are far below it.
const FRAME_BYTES_MAX: u32 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "{path} has no SHA-256 trailer ({size} bytes is not 32 more than a multiple of 512): it is \
         truncated or not a snapshot (--skip-hash-check reads it anyway)"
    )]
    NoTrailer { path: PathBuf, size: u64 },
    #[error("{path} is damaged: its SHA-256 is {actual}, its trailer says {expected}")]
    HashMismatch {
        path: PathBuf,
        actual: String,
        expected: String,
    },
    #[error("{path} is not a Shoal snapshot (an etcd snapshot holds a bbolt database, which Shoal cannot restore)")]
    NotShoal { path: PathBuf },
    #[error("{path} is damaged at byte {offset}: {detail}")]
    Damaged { path: PathBuf, offset: u64, detail: String },
    #[error("{path} was written in snapshot format {found}; this Shoal reads format {FORMAT} and older")]
    TooNew { path: PathBuf, found: u32 },
}

/// Encodes frames into chunks of at least `chunk_bytes`, hashing as it goes.
pub struct Writer {
    hasher: digest::Context,
    buffer: Vec<u8>,
    chunk_bytes: usize,
    written: u64,
}

impl Writer {
    pub fn new(chunk_bytes: usize) -> Self {
        let mut writer = Self {
            hasher: digest::Context::new(&digest::SHA256),
            buffer: Vec::with_capacity(chunk_bytes * 2),
            chunk_bytes,
            written: 0,
        };
        writer.buffer.extend_from_slice(MAGIC);
        writer
    }

    pub fn push(&mut self, frame: frame::Frame) {
        let frame = Frame { frame: Some(frame) };
        let length = u32::try_from(frame.encoded_len()).expect("a frame over 4 GiB");
        self.buffer.extend_from_slice(&length.to_be_bytes());
        frame.encode(&mut self.buffer).expect("a Vec grows as needed");
    }

    /// A chunk to send, once enough is buffered.
    pub fn take_chunk(&mut self) -> Option<Vec<u8>> {
        if self.buffer.len() < self.chunk_bytes {
            return None;
        }
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(self.chunk_bytes * 2));
        self.hasher.update(&chunk);
        self.written += chunk.len() as u64;
        Some(chunk)
    }

    /// Bytes handed out so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The rest of the file: what is buffered, the padding and the trailer.
    pub fn finish(mut self) -> Vec<u8> {
        let mut tail = std::mem::take(&mut self.buffer);
        let length = self.written + tail.len() as u64;
        let padding = (ALIGN - length % ALIGN) % ALIGN;
        tail.resize(tail.len() + padding as usize, 0);
        self.hasher.update(&tail);
        tail.extend_from_slice(self.hasher.finish().as_ref());
        tail
    }
}

/// Reads a backup file frame by frame, after checking its trailer (unless told not to).
pub struct Reader {
    path: PathBuf,
    input: BufReader<File>,
    offset: u64,
    /// Where the frames end at the latest (the padding and trailer follow).
    end: u64,
    done: bool,
    /// Frames read so far: a header only first, and an `End` must count the rest.
    headers: u64,
    keys: u64,
    leases: u64,
}

/// What [`verify`] found: the file's size and SHA-256.
pub struct Checked {
    pub size: u64,
    pub sha256: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Checks that `path` ends with the SHA-256 of what comes before.
pub fn verify(path: &Path) -> Result<Checked, FormatError> {
    let io = |source| FormatError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    if size < HASH_BYTES || size % ALIGN != HASH_BYTES {
        return Err(FormatError::NoTrailer {
            path: path.to_path_buf(),
            size,
        });
    }
    let mut hasher = digest::Context::new(&digest::SHA256);
    let mut remaining = size - HASH_BYTES;
    let mut buffer = vec![0u8; 1 << 20];
    while remaining > 0 {
        let take = remaining.min(buffer.len() as u64) as usize;
        file.read_exact(&mut buffer[..take]).map_err(io)?;
        hasher.update(&buffer[..take]);
        remaining -= take as u64;
    }
    let mut trailer = [0u8; HASH_BYTES as usize];
    file.read_exact(&mut trailer).map_err(io)?;
    let actual = hasher.finish();
    if actual.as_ref() != trailer {
        return Err(FormatError::HashMismatch {
            path: path.to_path_buf(),
            actual: hex(actual.as_ref()),
            expected: hex(&trailer),
        });
    }
    Ok(Checked {
        size,
        sha256: hex(&trailer),
    })
}

impl Reader {
    /// Opens `path` and reads its magic bytes; frames follow with [`Reader::next_frame`].
    pub fn open(path: &Path) -> Result<Self, FormatError> {
        let io = |source| FormatError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::open(path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        let mut magic = [0u8; 8];
        if size < MAGIC.len() as u64 || file.read_exact(&mut magic).is_err() || &magic != MAGIC {
            return Err(FormatError::NotShoal {
                path: path.to_path_buf(),
            });
        }
        file.seek(SeekFrom::Start(MAGIC.len() as u64)).map_err(io)?;
        Ok(Self {
            path: path.to_path_buf(),
            input: BufReader::with_capacity(1 << 20, file),
            offset: MAGIC.len() as u64,
            end: size,
            done: false,
            headers: 0,
            keys: 0,
            leases: 0,
        })
    }

    fn damaged(&self, detail: impl Into<String>) -> FormatError {
        FormatError::Damaged {
            path: self.path.clone(),
            offset: self.offset,
            detail: detail.into(),
        }
    }

    /// The next frame; `None` after the `End` frame. A file that stops before `End`,
    /// has a frame before its header or a second header, or whose `End` does not count
    /// the keys and leases before it, is damaged.
    pub fn next_frame(&mut self) -> Result<Option<frame::Frame>, FormatError> {
        if self.done {
            return Ok(None);
        }
        let mut length = [0u8; 4];
        if self.offset + 4 > self.end || self.input.read_exact(&mut length).is_err() {
            return Err(self.damaged("the file ends before its last frame"));
        }
        let length = u32::from_be_bytes(length);
        if length > FRAME_BYTES_MAX || self.offset + 4 + u64::from(length) > self.end {
            return Err(self.damaged(format!("a frame of {length} bytes does not fit in the file")));
        }
        let mut bytes = vec![0u8; length as usize];
        self.input
            .read_exact(&mut bytes)
            .map_err(|error| self.damaged(error.to_string()))?;
        let frame = Frame::decode(bytes.as_slice())
            .map_err(|error| self.damaged(format!("undecodable frame: {error}")))?
            .frame
            .ok_or_else(|| self.damaged("an empty frame"))?;
        let first = self.headers == 0 && self.keys == 0 && self.leases == 0;
        match &frame {
            frame::Frame::Header(_) if !first => return Err(self.damaged("a second header")),
            frame::Frame::Header(header) if header.format > FORMAT => {
                return Err(FormatError::TooNew {
                    path: self.path.clone(),
                    found: header.format,
                })
            }
            frame::Frame::Header(_) => self.headers += 1,
            _ if self.headers == 0 => return Err(self.damaged("it does not start with a header")),
            frame::Frame::Key(_) => self.keys += 1,
            frame::Frame::Lease(_) => self.leases += 1,
            frame::Frame::Auth(_) => {}
            frame::Frame::End(end) => {
                if (end.keys, end.leases) != (self.keys, self.leases) {
                    return Err(self.damaged(format!(
                        "it says it holds {} keys and {} leases, but {} keys and {} leases were read",
                        end.keys, end.leases, self.keys, self.leases
                    )));
                }
                self.done = true;
            }
        }
        self.offset += 4 + u64::from(length);
        Ok(Some(frame))
    }
}

/// What `shoal snapshot status` reports of a backup file.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FileStatus {
    pub revision: i64,
    pub keys: u64,
    pub leases: u64,
    pub size: u64,
    pub sha256: String,
    pub cluster_id: u64,
    pub created_unix_ms: i64,
    pub shoal_version: String,
}

/// Checks `path` whole (trailer and every frame) and describes it.
pub fn status(path: &Path) -> Result<FileStatus, FormatError> {
    let checked = verify(path)?;
    let mut reader = Reader::open(path)?;
    let damaged = |detail: &str| FormatError::Damaged {
        path: path.to_path_buf(),
        offset: MAGIC.len() as u64,
        detail: detail.to_string(),
    };
    let Some(frame::Frame::Header(header)) = reader.next_frame()? else {
        return Err(damaged("it does not start with a header"));
    };
    let (mut keys, mut leases) = (0u64, 0u64);
    while let Some(frame) = reader.next_frame()? {
        match frame {
            frame::Frame::Key(_) => keys += 1,
            frame::Frame::Lease(_) => leases += 1,
            _ => {}
        }
    }
    Ok(FileStatus {
        revision: header.revision,
        keys,
        leases,
        size: checked.size,
        sha256: checked.sha256,
        cluster_id: header.cluster_id,
        created_unix_ms: header.created_unix_ms,
        shoal_version: header.shoal_version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::shoal::backup::{End, Header, Lease};
    use crate::proto::shoal::kv::KeyValue;
    use std::io::Write;

    fn write_file(dir: &Path, keys: usize) -> PathBuf {
        let mut writer = Writer::new(1024);
        let mut bytes = Vec::new();
        writer.push(frame::Frame::Header(Header {
            format: FORMAT,
            revision: 42,
            ..Default::default()
        }));
        for index in 0..keys {
            writer.push(frame::Frame::Key(KeyValue {
                key: format!("\x01key{index:05}").into_bytes().into(),
                value: vec![7u8; 100].into(),
                create_revision: 2,
                mod_revision: 3,
                version: 2,
                lease: 0,
            }));
            while let Some(chunk) = writer.take_chunk() {
                bytes.extend_from_slice(&chunk);
            }
        }
        writer.push(frame::Frame::Lease(Lease { id: 5, ttl: 60 }));
        writer.push(frame::Frame::End(End {
            keys: keys as u64,
            leases: 1,
        }));
        bytes.extend_from_slice(&writer.finish());
        let path = dir.join("backup.db");
        File::create(&path).and_then(|mut file| file.write_all(&bytes)).unwrap();
        path
    }

    fn frames(path: &Path) -> Result<Vec<frame::Frame>, FormatError> {
        let mut reader = Reader::open(path)?;
        let mut frames = Vec::new();
        while let Some(frame) = reader.next_frame()? {
            frames.push(frame);
        }
        Ok(frames)
    }

    #[test]
    fn a_written_file_has_etcds_trailer_and_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(dir.path(), 300);
        let size = std::fs::metadata(&path).unwrap().len();
        assert_eq!(size % 512, 32, "etcdctl checks the length for the SHA-256 trailer");
        verify(&path).unwrap();
        let frames = frames(&path).unwrap();
        assert_eq!(frames.len(), 303);
        assert!(matches!(&frames[0], frame::Frame::Header(header) if header.revision == 42));
        assert!(matches!(&frames[150], frame::Frame::Key(kv) if kv.key.as_ref() == b"\x01key00149"));
        assert!(matches!(&frames[302], frame::Frame::End(end) if end.keys == 300));
    }

    #[test]
    fn a_flipped_byte_or_a_cut_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(dir.path(), 50);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[700] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(verify(&path), Err(FormatError::HashMismatch { .. })));

        let path = write_file(dir.path(), 50);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 600]).unwrap();
        assert!(matches!(verify(&path), Err(FormatError::NoTrailer { .. })));
        // Read without the check, a cut file is still refused before its end.
        assert!(matches!(frames(&path), Err(FormatError::Damaged { .. })));
    }

    #[test]
    fn an_etcd_snapshot_is_named_for_what_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etcd.db");
        std::fs::write(&path, vec![0u8; 4096 + 32]).unwrap();
        assert!(matches!(Reader::open(&path), Err(FormatError::NotShoal { .. })));
    }
}
