//! STUB
use std::io;
use std::path::PathBuf;
pub trait Store: Send + Sync {
    fn put(&self, name: &str, data: &[u8]) -> io::Result<()>;
    fn append(&self, name: &str, data: &[u8]) -> io::Result<()>;
    fn get(&self, name: &str) -> io::Result<Vec<u8>>;
    fn truncate(&self, name: &str, len: u64) -> io::Result<()>;
    fn list(&self) -> io::Result<Vec<String>>;
}
pub struct LocalStore {
    pub dir: PathBuf,
}
impl LocalStore {
    pub fn new(dir: PathBuf) -> io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }
}
impl Store for LocalStore {
    fn put(&self, _: &str, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
    fn append(&self, _: &str, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
    fn get(&self, _: &str) -> io::Result<Vec<u8>> {
        Ok(vec![])
    }
    fn truncate(&self, _: &str, _: u64) -> io::Result<()> {
        Ok(())
    }
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(vec![])
    }
}
