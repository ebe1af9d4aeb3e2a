//! Sealed credentials: AES-256-GCM with a fresh random 96-bit nonce per write and the row's
//! identity as associated data, under a named key so keys can be rotated.
//!
//! Never logs, prints or returns key material or plaintext in an error.

use std::collections::HashMap;
use std::fmt;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Environment variable holding the current sealing key (standard base64 of 32 bytes).
pub const SEALING_KEY_ENV: &str = "CRABGLAMP_SEALING_KEY";
/// Environment variable naming the current key (default `k1`).
pub const SEALING_KEY_ID_ENV: &str = "CRABGLAMP_SEALING_KEY_ID";
/// Environment variable with retired keys still needed to open old rows: `id=base64,id=base64`.
pub const PREVIOUS_KEYS_ENV: &str = "CRABGLAMP_SEALING_PREVIOUS_KEYS";

/// Errors of sealing and opening.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    /// No sealing key configured.
    #[error(
        "no sealing key: set {SEALING_KEY_ENV} to the standard base64 of 32 random bytes (e.g. `openssl rand -base64 32`)"
    )]
    MissingKey,
    /// A configured key is not base64 of exactly 32 bytes.
    #[error("sealing key {key_id:?} is malformed: {reason} (expected the standard base64 of 32 random bytes)")]
    MalformedKey {
        /// Which key.
        key_id: String,
        /// What is wrong (never the key itself).
        reason: String,
    },
    /// A row was sealed under a key that is not configured.
    #[error("credential was sealed with key {0:?}, which is not configured (add it to {PREVIOUS_KEYS_ENV})")]
    UnknownKey(String),
    /// Encryption failed.
    #[error("sealing failed")]
    Seal,
    /// The ciphertext, nonce, key or associated data do not match: tampered, moved or wrong key.
    #[error("credential cannot be opened: wrong key, wrong row, or tampered ciphertext")]
    Open,
}

/// Where a sealed value lives; also its associated data, so a ciphertext copied to another row
/// does not open.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CredentialId {
    /// What kind of credential, e.g. `tunnel-token`.
    pub scope: String,
    /// UID of the object it belongs to.
    pub resource_uid: String,
    /// Name within the object.
    pub name: String,
}

impl CredentialId {
    fn associated_data(&self) -> Vec<u8> {
        // Length-prefixed so that ("a/b", "c") and ("a", "b/c") differ.
        let mut aad = b"crabglamp.sealed_credentials.v1".to_vec();
        for part in [&self.scope, &self.resource_uid, &self.name] {
            aad.extend_from_slice(&(part.len() as u32).to_be_bytes());
            aad.extend_from_slice(part.as_bytes());
        }
        aad
    }
}

/// A sealed value as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Name of the key it was sealed with.
    pub key_id: String,
    /// The 96-bit nonce.
    pub nonce: Vec<u8>,
    /// Ciphertext with the GCM tag.
    pub ciphertext: Vec<u8>,
}

/// HMAC-SHA256, the MAC of the audit anchor.
pub type AnchorMac = Hmac<Sha256>;

/// Label of the anchor key derivation: HMAC-SHA256(sealing key, label). The sealing key is
/// already 32 uniformly random bytes, so HKDF's extract step adds nothing; one HMAC block under
/// a fixed label is HKDF-Expand's single-block form, and keeps the anchor key apart from the
/// AES key (a MAC never reveals anything usable to open a sealed row).
const ANCHOR_KEY_LABEL: &[u8] = b"crabglamp.audit-anchor.key.v1";

/// One configured key: the AES-256-GCM cipher and the anchor MAC key derived from it.
#[derive(Clone)]
struct KeyPair {
    cipher: Aes256Gcm,
    anchor: AnchorMac,
}

/// The sealing keys: one current key for new writes, older ones to open old rows.
#[derive(Clone)]
pub struct SealingKeys {
    current: String,
    keys: HashMap<String, KeyPair>,
}

impl fmt::Debug for SealingKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<&String> = self.keys.keys().collect();
        ids.sort();
        f.debug_struct("SealingKeys").field("current", &self.current).field("key_ids", &ids).finish()
    }
}

fn parse_key(key_id: &str, encoded: &str) -> Result<KeyPair, SealError> {
    let malformed = |reason: &str| SealError::MalformedKey { key_id: key_id.to_owned(), reason: reason.to_owned() };
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(encoded.trim()).map_err(|_| malformed("not valid base64"))?;
    if bytes.len() != 32 {
        return Err(malformed(&format!("decodes to {} bytes, not 32", bytes.len())));
    }
    let mut derive = <AnchorMac as Mac>::new_from_slice(&bytes).map_err(|_| malformed("unusable as an HMAC key"))?;
    derive.update(ANCHOR_KEY_LABEL);
    let anchor_key = derive.finalize().into_bytes();
    Ok(KeyPair {
        cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&bytes)),
        anchor: <AnchorMac as Mac>::new_from_slice(&anchor_key).map_err(|_| malformed("unusable as an HMAC key"))?,
    })
}

impl SealingKeys {
    /// Keys from their base64 encodings: `current` seals, `previous` (id, key) only open.
    pub fn new(current_id: &str, current: &str, previous: &[(String, String)]) -> Result<Self, SealError> {
        let mut keys = HashMap::new();
        keys.insert(current_id.to_owned(), parse_key(current_id, current)?);
        for (id, encoded) in previous {
            keys.insert(id.clone(), parse_key(id, encoded)?);
        }
        Ok(Self { current: current_id.to_owned(), keys })
    }

    /// Keys from a lookup of configuration values (the environment in production), so tests
    /// can pass a map instead of mutating the process environment.
    pub fn from_config(get: impl Fn(&str) -> Option<String>) -> Result<Self, SealError> {
        let current = get(SEALING_KEY_ENV).filter(|v| !v.trim().is_empty()).ok_or(SealError::MissingKey)?;
        let current_id = get(SEALING_KEY_ID_ENV).filter(|v| !v.is_empty()).unwrap_or_else(|| "k1".into());
        let previous = get(PREVIOUS_KEYS_ENV)
            .unwrap_or_default()
            .split(',')
            .filter(|entry| !entry.trim().is_empty())
            .map(|entry| match entry.split_once('=') {
                Some((id, key)) => Ok((id.trim().to_owned(), key.trim().to_owned())),
                None => Err(SealError::MalformedKey {
                    key_id: "?".into(),
                    reason: format!("{PREVIOUS_KEYS_ENV} entries must look like id=base64"),
                }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(&current_id, &current, &previous)
    }

    /// Keys from the process environment.
    pub fn from_env() -> Result<Self, SealError> {
        Self::from_config(|name| std::env::var(name).ok())
    }

    /// Name of the key new writes are sealed with.
    pub fn current_id(&self) -> &str {
        &self.current
    }

    /// A fresh HMAC-SHA256 instance under the audit anchor key derived from the sealing key
    /// `key_id` (the database never holds it); `None` when that key is not configured.
    pub fn anchor_mac(&self, key_id: &str) -> Option<AnchorMac> {
        self.keys.get(key_id).map(|k| k.anchor.clone())
    }

    /// Seals `plaintext` for the row `id` under the current key with a fresh random nonce.
    pub fn seal(&self, id: &CredentialId, plaintext: &[u8]) -> Result<Sealed, SealError> {
        let cipher = &self.keys.get(&self.current).ok_or_else(|| SealError::UnknownKey(self.current.clone()))?.cipher;
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ciphertext = cipher
            .encrypt(&nonce, Payload { msg: plaintext, aad: &id.associated_data() })
            .map_err(|_| SealError::Seal)?;
        Ok(Sealed { key_id: self.current.clone(), nonce: nonce.to_vec(), ciphertext })
    }

    /// Opens a value sealed for the row `id`.
    pub fn open(&self, id: &CredentialId, sealed: &Sealed) -> Result<Vec<u8>, SealError> {
        let cipher = &self.keys.get(&sealed.key_id).ok_or_else(|| SealError::UnknownKey(sealed.key_id.clone()))?.cipher;
        if sealed.nonce.len() != 12 {
            return Err(SealError::Open);
        }
        cipher
            .decrypt(Nonce::from_slice(&sealed.nonce), Payload { msg: &sealed.ciphertext, aad: &id.associated_data() })
            .map_err(|_| SealError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const KEY_B: &str = "HxweHRwbGhkYFxYVFBMSERAPDg0MCwoJCAcGBQQDAgE=";

    fn id(name: &str) -> CredentialId {
        CredentialId { scope: "tunnel-token".into(), resource_uid: "uid-1".into(), name: name.into() }
    }

    #[test]
    fn round_trips_and_uses_a_fresh_nonce_each_time() {
        let keys = SealingKeys::new("k1", KEY_A, &[]).expect("key");
        let a = keys.seal(&id("t"), b"secret").expect("seal");
        let b = keys.seal(&id("t"), b"secret").expect("seal");
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ciphertext, b.ciphertext);
        assert_eq!(keys.open(&id("t"), &a).expect("open"), b"secret");
    }

    #[test]
    fn refuses_wrong_key_wrong_row_and_flipped_bits() {
        let keys = SealingKeys::new("k1", KEY_A, &[]).expect("key");
        let sealed = keys.seal(&id("t"), b"secret").expect("seal");
        let other = SealingKeys::new("k1", KEY_B, &[]).expect("key");
        assert_eq!(other.open(&id("t"), &sealed), Err(SealError::Open));
        assert_eq!(keys.open(&id("other-row"), &sealed), Err(SealError::Open));
        for i in 0..sealed.ciphertext.len() {
            let mut flipped = sealed.clone();
            flipped.ciphertext[i] ^= 0x01;
            assert_eq!(keys.open(&id("t"), &flipped), Err(SealError::Open), "bit flip at byte {i}");
        }
        let mut flipped_nonce = sealed.clone();
        flipped_nonce.nonce[0] ^= 0x80;
        assert_eq!(keys.open(&id("t"), &flipped_nonce), Err(SealError::Open));
    }

    #[test]
    fn rotation_opens_old_rows_and_seals_with_the_new_key() {
        let old = SealingKeys::new("k1", KEY_A, &[]).expect("key");
        let sealed = old.seal(&id("t"), b"secret").expect("seal");
        let rotated = SealingKeys::new("k2", KEY_B, &[("k1".into(), KEY_A.into())]).expect("keys");
        assert_eq!(rotated.open(&id("t"), &sealed).expect("open"), b"secret");
        assert_eq!(rotated.seal(&id("t"), b"x").expect("seal").key_id, "k2");
    }

    #[test]
    fn configuration_errors_are_clear_and_never_echo_the_key() {
        let none = SealingKeys::from_config(|_| None);
        assert_eq!(none.unwrap_err(), SealError::MissingKey);
        let short = SealingKeys::from_config(|k| (k == SEALING_KEY_ENV).then(|| "c2hvcnQ=".to_owned()));
        let message = short.unwrap_err().to_string();
        assert!(message.contains("decodes to 5 bytes, not 32"), "{message}");
        assert!(!message.contains("c2hvcnQ="), "the key must not appear in errors");
        let garbage = SealingKeys::from_config(|k| (k == SEALING_KEY_ENV).then(|| "not base64!".to_owned()));
        assert!(garbage.unwrap_err().to_string().contains("not valid base64"));
        let debug = format!("{:?}", SealingKeys::new("k1", KEY_A, &[]).expect("key"));
        assert!(!debug.contains(KEY_A));
    }
}
