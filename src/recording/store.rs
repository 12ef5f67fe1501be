//! Where a recording's files go: the [`Store`] trait speaks in object names
//! (not paths) so an object store could stand behind it later, and
//! [`LocalStore`] keeps them in one folder per recording.
//!
//! Names are checked here, once, for every store: ASCII `[A-Za-z0-9._-]`, no
//! `..`, nothing that could leave the folder. Whole objects (`put`) are
//! replaced atomically (a temporary file renamed over the old one) so a reader
//! or a crash never sees half a playlist; segments grow by `append`.
//!
//! Imports nothing from its siblings.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;

/// A recording's objects, by name.
pub trait Store: Send + Sync {
    /// Writes a whole object, atomically replacing what was there.
    fn put(&self, name: &str, data: &[u8]) -> io::Result<()>;
    /// Appends to an object (created when missing): a growing segment.
    fn append(&self, name: &str, data: &[u8]) -> io::Result<()>;
    /// Reads a whole object.
    fn get(&self, name: &str) -> io::Result<Vec<u8>>;
    /// Cuts an object to `len` bytes (repair drops a half-written fragment).
    fn truncate(&self, name: &str, len: u64) -> io::Result<()>;
    /// The names of all objects (temporary files excluded).
    fn list(&self) -> io::Result<Vec<String>>;
}

/// Checks an object name: 1–128 characters of `[A-Za-z0-9._-]`, not starting
/// with a dot (no `..`, no hidden or temporary files).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && !name.contains("..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

fn checked(name: &str) -> io::Result<&str> {
    if valid_name(name) {
        Ok(name)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid object name {name:?}"),
        ))
    }
}

/// A folder on the local disk, one per recording.
#[derive(Debug, Clone)]
pub struct LocalStore {
    dir: PathBuf,
}

impl LocalStore {
    /// Uses (and creates, with its parents) `dir`.
    pub fn new(dir: PathBuf) -> io::Result<Self> {
        fs::create_dir_all(&dir)?;
        Ok(LocalStore { dir })
    }

    /// The folder.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }
}

impl Store for LocalStore {
    fn put(&self, name: &str, data: &[u8]) -> io::Result<()> {
        let name = checked(name)?;
        // A hidden temporary name never passes `valid_name`, so `list` and the
        // file server never see it.
        let tmp = self.dir.join(format!(".{name}.tmp"));
        {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(data)?;
        }
        fs::rename(&tmp, self.dir.join(name))
    }

    fn append(&self, name: &str, data: &[u8]) -> io::Result<()> {
        let name = checked(name)?;
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(name))?;
        f.write_all(data)
    }

    fn get(&self, name: &str) -> io::Result<Vec<u8>> {
        fs::read(self.dir.join(checked(name)?))
    }

    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        let f = OpenOptions::new()
            .write(true)
            .open(self.dir.join(checked(name)?))?;
        f.set_len(len)
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            if let Some(name) = entry?.file_name().to_str()
                && valid_name(name)
            {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_objects_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().join("rec")).unwrap();
        for bad in [
            "", "..", "a/b", "../x", ".hidden", "a b", "é", "a\\b", "x..y",
        ] {
            assert!(store.put(bad, b"x").is_err(), "{bad:?} accepted");
            assert!(store.get(bad).is_err(), "{bad:?} accepted");
        }
        store.put("index.m3u8", b"one").unwrap();
        store.put("index.m3u8", b"two").unwrap();
        assert_eq!(store.get("index.m3u8").unwrap(), b"two");
        store.append("seg00001.m4s", b"abc").unwrap();
        store.append("seg00001.m4s", b"def").unwrap();
        store.truncate("seg00001.m4s", 4).unwrap();
        assert_eq!(store.get("seg00001.m4s").unwrap(), b"abcd");
        assert_eq!(store.list().unwrap(), vec!["index.m3u8", "seg00001.m4s"]);
    }
}
