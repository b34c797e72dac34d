//! How much room is left on the volume that holds a node's data, against the reserve
//! (`--storage-reserve-bytes`) the node keeps so deletes, compaction and catching up
//! still have room when clients have filled the rest.
//!
//! Below the reserve the node is **low**: it refuses client writes that add data (they
//! go to another member), takes no leadership, forwards no proposals, and hands the
//! ranges it leads to others. Below a quarter of the reserve it is **critical**: it also
//! stops taking log entries from leaders (the other members make the quorum), so the
//! disk never fills and the engine never fails on a full volume. Room coming back (half
//! the reserve above it, so the state does not flap) ends both.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Room {
    Enough,
    Low,
    Critical,
}

pub struct DiskSpace {
    path: PathBuf,
    reserve: u64,
    room: AtomicU8,
    free: AtomicU64,
}

impl DiskSpace {
    /// `reserve` 0 turns the guard off (the node writes until the volume is full).
    pub fn new(path: &Path, reserve: u64) -> Self {
        Self {
            path: path.to_path_buf(),
            reserve,
            room: AtomicU8::new(0),
            free: AtomicU64::new(u64::MAX),
        }
    }

    pub fn reserve(&self) -> u64 {
        self.reserve
    }

    pub fn room(&self) -> Room {
        match self.room.load(Ordering::Acquire) {
            0 => Room::Enough,
            1 => Room::Low,
            _ => Room::Critical,
        }
    }

    pub fn is_low(&self) -> bool {
        self.room() != Room::Enough
    }

    /// Bytes free for this process on the volume, as last measured.
    pub fn free_bytes(&self) -> u64 {
        self.free.load(Ordering::Acquire)
    }

    /// Measures the volume again; the room before and after.
    pub fn refresh(&self) -> std::io::Result<(Room, Room)> {
        let stats = rustix::fs::statvfs(&self.path).map_err(std::io::Error::from)?;
        let free = stats.f_bavail.saturating_mul(stats.f_frsize);
        self.free.store(free, Ordering::Release);
        let before = self.room();
        let after = judge(before, free, self.reserve);
        self.room.store(
            match after {
                Room::Enough => 0,
                Room::Low => 1,
                Room::Critical => 2,
            },
            Ordering::Release,
        );
        Ok((before, after))
    }
}

/// The room with `free` bytes left, coming from `before`.
fn judge(before: Room, free: u64, reserve: u64) -> Room {
    if reserve == 0 {
        return Room::Enough;
    }
    let critical = reserve / 4;
    let recovered = reserve + reserve / 2;
    match before {
        _ if free < critical => Room::Critical,
        // Out of each state only well above its line: one large compaction must not
        // flap it.
        Room::Critical if free < reserve / 2 => Room::Critical,
        _ if free < reserve => Room::Low,
        Room::Enough => Room::Enough,
        _ if free >= recovered => Room::Enough,
        _ => Room::Low,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_falls_at_the_reserve_and_comes_back_well_above_it() {
        let mb = 1 << 20;
        assert_eq!(judge(Room::Enough, 200 * mb, 100 * mb), Room::Enough);
        assert_eq!(judge(Room::Enough, 99 * mb, 100 * mb), Room::Low);
        assert_eq!(judge(Room::Low, 20 * mb, 100 * mb), Room::Critical);
        assert_eq!(judge(Room::Critical, 40 * mb, 100 * mb), Room::Critical);
        assert_eq!(judge(Room::Critical, 60 * mb, 100 * mb), Room::Low);
        assert_eq!(judge(Room::Low, 120 * mb, 100 * mb), Room::Low);
        assert_eq!(judge(Room::Low, 150 * mb, 100 * mb), Room::Enough);
        assert_eq!(judge(Room::Critical, 0, 0), Room::Enough, "no reserve, no guard");
    }

    #[test]
    fn a_real_volume_measures() {
        let dir = tempfile::tempdir().unwrap();
        let space = DiskSpace::new(dir.path(), 1);
        assert_eq!(space.refresh().unwrap().1, Room::Enough);
        assert!(space.free_bytes() > 1);
    }
}
