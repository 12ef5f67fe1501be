//! Secrets at rest: AES-256-GCM sealing of the few values tandem must get back
//! in the clear later (platform stream keys, OAuth tokens, PKCE verifiers), under
//! a keyring from configuration so a key can be replaced and old rows re-sealed
//! (`tandem secrets rotate`, docs/SECURITY.md "Secrets at rest").
//!
//! A sealed value is its key id plus `base64(nonce || ciphertext || tag)`, with a
//! fresh random 96-bit nonce each time. The associated data names the row and the
//! field (`platform_connections:{id}:stream_key`): a ciphertext copied into
//! another row or column does not open there.
//!
//! Keys come from `[secrets] keys` (`"id:base64-of-32-bytes"`, `active_key` names
//! the one new values are sealed with). With none configured, 32 random bytes are
//! generated into `data_dir/secrets.key` (mode 0600) under the id
//! [`GENERATED_KEY_ID`], as the media-token key is; that file is also read when
//! keys are configured, so rows sealed before the first configured key still open
//! until they are rotated. A leaf module: it imports only the configuration.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::config::Config;

/// The file in `data_dir` that keeps the generated key.
pub const KEY_FILE: &str = "secrets.key";
/// The id of the generated key (reserved: a configured key may not use it).
pub const GENERATED_KEY_ID: &str = "local";
/// Bytes of a nonce (AES-GCM's standard 96 bits).
const NONCE_LEN: usize = 12;

/// A sealed value as stored: which key, and `base64(nonce || ciphertext || tag)`.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub blob: String,
}

impl std::fmt::Debug for Sealed {
    // The blob is not secret without the key, but there is no reason to print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealed({}, <{} bytes>)", self.key_id, self.blob.len())
    }
}

/// Why a sealed value did not open; never says anything about its content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error(
        "sealed with key `{0}`, which the keyring does not hold (add it back to [secrets] keys)"
    )]
    UnknownKey(String),
    #[error("the sealed value does not open: corrupt, or not sealed for this row and field")]
    Corrupt,
}

/// The keys tandem seals and opens with; `Clone` is cheap.
#[derive(Clone)]
pub struct Keyring {
    keys: Arc<BTreeMap<String, Aes256Gcm>>,
    active: Arc<str>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .field("active", &self.active)
            .finish()
    }
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, message)
}

/// Key ids are short names: letters, digits, `_ . -`.
fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl Keyring {
    /// The configured keys (`[secrets]`), plus the generated `data_dir/secrets.key`:
    /// read when present, created when no key is configured.
    pub fn from_config(config: &Config) -> std::io::Result<Keyring> {
        let mut keys = BTreeMap::new();
        for (i, entry) in config.secrets.keys.iter().enumerate() {
            let (id, b64) = entry.split_once(':').ok_or_else(|| {
                invalid(format!(
                    "secrets.keys[{i}] must be \"id:base64-of-32-bytes\" (e.g. \"k2:\" + `openssl rand -base64 32`)"
                ))
            })?;
            let id = id.trim();
            if !valid_key_id(id) || id == GENERATED_KEY_ID {
                return Err(invalid(format!(
                    "secrets.keys[{i}]: the id must be 1-64 characters of A-Z a-z 0-9 _ . - \
                     and not `{GENERATED_KEY_ID}` (the generated key's)"
                )));
            }
            let bytes = STANDARD.decode(b64.trim()).ok().filter(|b| b.len() == 32);
            let Some(bytes) = bytes else {
                return Err(invalid(format!(
                    "secrets.keys[{i}] (`{id}`): the key must be 32 bytes in standard base64 \
                     (`openssl rand -base64 32`)"
                )));
            };
            if keys.insert(id.to_string(), cipher(&bytes)).is_some() {
                return Err(invalid(format!(
                    "secrets.keys: the id `{id}` is given twice"
                )));
            }
        }
        let generated = read_or_create(&config.data_dir, keys.is_empty())?;
        if let Some(bytes) = generated {
            keys.insert(GENERATED_KEY_ID.to_string(), cipher(&bytes));
        }
        let active = config.secrets.active_key.trim();
        let active = if !active.is_empty() {
            if !keys.contains_key(active) {
                return Err(invalid(format!(
                    "secrets.active_key is `{active}`, which is not among secrets.keys"
                )));
            }
            active.to_string()
        } else if config.secrets.keys.len() == 1 {
            // One configured key: that is the one meant.
            let (id, _) = config.secrets.keys[0].split_once(':').expect("checked");
            id.trim().to_string()
        } else if config.secrets.keys.is_empty() {
            GENERATED_KEY_ID.to_string()
        } else {
            return Err(invalid(
                "secrets.keys has several keys: set secrets.active_key to the id new values are sealed with"
                    .into(),
            ));
        };
        Ok(Keyring {
            keys: Arc::new(keys),
            active: active.into(),
        })
    }

    /// A keyring of the given keys (`(id, 32 bytes)`), sealing with `active`: for tests.
    pub fn from_keys(keys: &[(&str, [u8; 32])], active: &str) -> Keyring {
        let keys: BTreeMap<String, Aes256Gcm> = keys
            .iter()
            .map(|(id, bytes)| (id.to_string(), cipher(bytes)))
            .collect();
        assert!(keys.contains_key(active), "the active key is in the ring");
        Keyring {
            keys: Arc::new(keys),
            active: active.into(),
        }
    }

    /// The id new values are sealed with.
    pub fn active_id(&self) -> &str {
        &self.active
    }

    /// Seals `plaintext` for the row and field `aad` names, with the active key.
    pub fn seal(&self, plaintext: &[u8], aad: &str) -> Sealed {
        let cipher = &self.keys[&*self.active];
        let nonce: [u8; NONCE_LEN] = rand::random();
        let ct = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: aad.as_bytes(),
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Sealed {
            key_id: self.active.to_string(),
            blob: STANDARD.encode(out),
        }
    }

    /// Opens a value sealed for `aad` (the same row and field it was sealed for).
    pub fn open(&self, sealed: &Sealed, aad: &str) -> Result<Vec<u8>, SecretError> {
        let cipher = self
            .keys
            .get(&sealed.key_id)
            .ok_or_else(|| SecretError::UnknownKey(sealed.key_id.clone()))?;
        let raw = STANDARD
            .decode(&sealed.blob)
            .map_err(|_| SecretError::Corrupt)?;
        if raw.len() < NONCE_LEN + 16 {
            return Err(SecretError::Corrupt);
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Corrupt)
    }

    /// Opens as UTF-8 text (every value tandem seals is text).
    pub fn open_string(&self, sealed: &Sealed, aad: &str) -> Result<String, SecretError> {
        String::from_utf8(self.open(sealed, aad)?).map_err(|_| SecretError::Corrupt)
    }
}

fn cipher(bytes: &[u8]) -> Aes256Gcm {
    Aes256Gcm::new_from_slice(bytes).expect("32-byte key")
}

/// The generated key in `dir`: read when present; created when `create` and absent.
fn read_or_create(dir: &Path, create: bool) -> std::io::Result<Option<Vec<u8>>> {
    let path = dir.join(KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let bytes = STANDARD
                .decode(text.trim())
                .ok()
                .filter(|b| b.len() == 32)
                .ok_or_else(|| {
                    invalid(format!(
                        "{} is not 32 bytes of base64: restore it from a backup (rows sealed with it \
                         do not open without it)",
                        path.display()
                    ))
                })?;
            Ok(Some(bytes))
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            if !create {
                return Ok(None);
            }
            std::fs::create_dir_all(dir)?;
            let bytes: [u8; 32] = rand::random();
            write_private(&path, &STANDARD.encode(bytes))?;
            Ok(Some(bytes.to_vec()))
        }
        Err(err) => Err(err),
    }
}

/// Writes a file only its owner can read (as `auth.rs` does for the media-token key).
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(contents.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Keyring {
        Keyring::from_keys(&[("a", [1; 32]), ("b", [2; 32])], "b")
    }

    #[test]
    fn seal_open_round_trip_bound_to_the_field() {
        let k = ring();
        let s = k.seal(b"live_1234_secret", "platform_connections:x:stream_key");
        assert_eq!(s.key_id, "b");
        assert!(!s.blob.contains("secret"));
        assert_eq!(
            k.open(&s, "platform_connections:x:stream_key").unwrap(),
            b"live_1234_secret"
        );
        // Another row or field: does not open.
        assert_eq!(
            k.open(&s, "platform_connections:y:stream_key"),
            Err(SecretError::Corrupt)
        );
        // Two seals of one value differ (fresh nonce).
        assert_ne!(s.blob, k.seal(b"live_1234_secret", "a").blob);
    }

    #[test]
    fn unknown_key_and_tampering_are_errors() {
        let k = ring();
        let mut s = k.seal(b"x", "f");
        s.key_id = "zz".into();
        assert_eq!(k.open(&s, "f"), Err(SecretError::UnknownKey("zz".into())));
        let mut s = k.seal(b"x", "f");
        let mut raw = STANDARD.decode(&s.blob).unwrap();
        raw[NONCE_LEN] ^= 1;
        s.blob = STANDARD.encode(raw);
        assert_eq!(k.open(&s, "f"), Err(SecretError::Corrupt));
    }

    #[test]
    fn debug_prints_ids_only() {
        let k = ring();
        let text = format!("{k:?}");
        assert!(text.contains("\"a\"") && text.contains("active"), "{text}");
        assert!(!text.contains("1, 1"), "{text}");
    }

    #[test]
    fn generated_key_file_is_private_and_reused() {
        let dir = std::env::temp_dir().join(format!("tandem-secrets-{:x}", rand::random::<u64>()));
        let mut config = Config::load_with_env(None, Vec::<(String, String)>::new()).unwrap();
        config.data_dir = dir.clone();
        let a = Keyring::from_config(&config).unwrap();
        assert_eq!(a.active_id(), GENERATED_KEY_ID);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let sealed = a.seal(b"k", "f");
        // A configured key becomes active; the generated one still opens old rows.
        config.secrets.keys = vec![format!("k2:{}", STANDARD.encode([7u8; 32]))];
        let b = Keyring::from_config(&config).unwrap();
        assert_eq!(b.active_id(), "k2");
        assert_eq!(b.open(&sealed, "f").unwrap(), b"k");
        // Bad entries are refused by name.
        config.secrets.keys = vec!["k3:short".into()];
        let err = Keyring::from_config(&config).unwrap_err().to_string();
        assert!(err.contains("secrets.keys[0]"), "{err}");
        config.secrets.keys = vec![];
        config.secrets.active_key = "nope".into();
        assert!(Keyring::from_config(&config).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
