//! Noticing that a file changed without being told: its size, modification
//! time and inode, compared every [`POLL_INTERVAL`]. `metadata` follows
//! symlinks, so a Kubernetes ConfigMap or Secret volume's swap of its `..data`
//! link is a change of inode. (A poll, not inotify: a volume's atomic swap
//! replaces directories that a watch would have to be set on again, and one
//! `stat` per file every few seconds costs nothing.)

use std::path::Path;

/// What a file looked like when last read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    #[cfg(unix)]
    inode: (u64, u64),
}

impl FileStamp {
    /// `None` when the file cannot be looked at (missing, unreadable directory).
    pub fn of(path: &Path) -> Option<Self> {
        std::fs::metadata(path).ok().map(|m| FileStamp {
            len: m.len(),
            modified: m.modified().ok(),
            #[cfg(unix)]
            inode: {
                use std::os::unix::fs::MetadataExt;
                (m.dev(), m.ino())
            },
        })
    }
}
