//! Backups of a whole cluster (etcd's `snapshot save` and `snapshot restore`): `save`
//! writes every key at one revision and every lease as a stream; `format` is the file,
//! its frames and its SHA-256 trailer. Restoring is the server's (`server::restore`): it
//! creates the data directory a member then starts from.

pub mod format;
pub mod save;
