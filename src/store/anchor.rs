//! The audit anchor: the chain's head (sequence, hash, time) authenticated with HMAC-SHA256
//! under a key derived from the sealing key, kept outside PostgreSQL.
//!
//! The chain alone proves only that the rows agree with each other: a superuser who deletes the
//! newest rows, or recomputes every hash from some row on, leaves a chain that still verifies.
//! The anchor is a copy of the head the database cannot change and an attacker without the
//! sealing key cannot forge; comparing the two finds both. This module is the pure part (the
//! MAC, the stored form, the comparison); `crate::audit_anchor` reads and writes it.

use std::collections::BTreeMap;

use chrono::{DateTime, SubsecRound, Utc};
use hmac::Mac;

use super::audit::{ChainHead, timestamp};
use super::seal::{AnchorMac, PREVIOUS_KEYS_ENV, SealingKeys};

/// Domain separation of the MAC; bump it if the message ever changes.
const MAC_DOMAIN: &[u8] = b"crabglamp.audit-anchor.v1";
/// The stored form's version (`format` in the ConfigMap).
pub const FORMAT: &str = "v1";

/// Why an anchor cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnchorError {
    /// A field is missing or does not parse.
    #[error("the audit anchor is malformed: {0}")]
    Malformed(String),
    /// It names a sealing key this process does not have.
    #[error(
        "the audit anchor is authenticated under sealing key {0:?}, which is not configured (add it to {PREVIOUS_KEYS_ENV})"
    )]
    UnknownKey(String),
    /// The MAC does not match: the anchor was altered, or written by someone without the key.
    #[error("the audit anchor's HMAC does not verify under sealing key {0:?}: it was altered or forged")]
    BadMac(String),
}

/// A published head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    /// Sequence number of the anchored event.
    pub seq: i64,
    /// Its hash.
    pub hash: Vec<u8>,
    /// When that event was written.
    pub recorded_at: DateTime<Utc>,
    /// When this anchor was made.
    pub published_at: DateTime<Utc>,
    /// The sealing key the MAC key was derived from.
    pub key_id: String,
    /// HMAC-SHA256 over all of the above.
    pub mac: Vec<u8>,
}

/// The MAC of the fields, each length-prefixed so no two anchors share an encoding.
fn mac_of(mut mac: AnchorMac, seq: i64, hash: &[u8], recorded_at: &str, published_at: &str, key_id: &str) -> AnchorMac {
    for field in [
        MAC_DOMAIN,
        seq.to_string().as_bytes(),
        hash,
        recorded_at.as_bytes(),
        published_at.as_bytes(),
        key_id.as_bytes(),
    ] {
        mac.update(&(field.len() as u64).to_be_bytes());
        mac.update(field);
    }
    mac
}

impl Anchor {
    /// Anchors `head` now, under the current sealing key.
    pub fn sign(head: &ChainHead, keys: &SealingKeys) -> Result<Anchor, AnchorError> {
        let key_id = keys.current_id().to_owned();
        let mac = keys.anchor_mac(&key_id).ok_or_else(|| AnchorError::UnknownKey(key_id.clone()))?;
        let recorded_at = head.recorded_at.trunc_subsecs(6);
        let published_at = Utc::now().trunc_subsecs(6);
        let tag = mac_of(mac, head.seq, &head.hash, &timestamp(&recorded_at), &timestamp(&published_at), &key_id)
            .finalize()
            .into_bytes()
            .to_vec();
        Ok(Anchor { seq: head.seq, hash: head.hash.clone(), recorded_at, published_at, key_id, mac: tag })
    }

    /// Checks the MAC (in constant time) under the key the anchor names.
    pub fn verify(&self, keys: &SealingKeys) -> Result<(), AnchorError> {
        let mac = keys.anchor_mac(&self.key_id).ok_or_else(|| AnchorError::UnknownKey(self.key_id.clone()))?;
        mac_of(mac, self.seq, &self.hash, &timestamp(&self.recorded_at), &timestamp(&self.published_at), &self.key_id)
            .verify_slice(&self.mac)
            .map_err(|_| AnchorError::BadMac(self.key_id.clone()))
    }

    /// The stored form: string fields of a ConfigMap's `data`.
    pub fn to_data(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("format".to_owned(), FORMAT.to_owned()),
            ("seq".to_owned(), self.seq.to_string()),
            ("hash".to_owned(), hex::encode(&self.hash)),
            ("recordedAt".to_owned(), timestamp(&self.recorded_at)),
            ("publishedAt".to_owned(), timestamp(&self.published_at)),
            ("keyId".to_owned(), self.key_id.clone()),
            ("hmac".to_owned(), hex::encode(&self.mac)),
        ])
    }

    /// Reads the stored form back (the MAC is not checked here: see [`Anchor::verify`]).
    pub fn from_data(data: &BTreeMap<String, String>) -> Result<Anchor, AnchorError> {
        let field = |name: &str| data.get(name).ok_or_else(|| AnchorError::Malformed(format!("no {name}")));
        let bad = |name: &str| AnchorError::Malformed(format!("{name} does not parse"));
        let time = |name: &str| -> Result<DateTime<Utc>, AnchorError> {
            Ok(DateTime::parse_from_rfc3339(field(name)?).map_err(|_| bad(name))?.with_timezone(&Utc))
        };
        if field("format")? != FORMAT {
            return Err(AnchorError::Malformed(format!("format is not {FORMAT}")));
        }
        Ok(Anchor {
            seq: field("seq")?.parse().map_err(|_| bad("seq"))?,
            hash: hex::decode(field("hash")?).map_err(|_| bad("hash"))?,
            recorded_at: time("recordedAt")?,
            published_at: time("publishedAt")?,
            key_id: field("keyId")?.clone(),
            mac: hex::decode(field("hmac")?).map_err(|_| bad("hmac"))?,
        })
    }
}

/// How the database compares with a verified anchor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Comparison {
    /// The database holds the anchored event unchanged; `behind` newer events are not anchored
    /// yet (a publish pending or failed: normal for a few events).
    Extends {
        /// Events after the anchored one.
        behind: i64,
    },
    /// The database ends before the anchored event: its newest rows were deleted.
    Truncated {
        /// The anchored event.
        anchored: i64,
        /// The database's newest event (0: none).
        last: i64,
    },
    /// The database has a different row (or none, with later ones present) at the anchored
    /// position: the chain was rewritten from there or before.
    Rewritten {
        /// The anchored event.
        seq: i64,
        /// The hash the database holds there, if any.
        found: Option<Vec<u8>>,
    },
}

/// Compares `anchor` with the database's newest event and its row at the anchored position.
pub fn compare(anchor: &Anchor, head: Option<&ChainHead>, hash_at_anchor: Option<&[u8]>) -> Comparison {
    let last = head.map_or(0, |h| h.seq);
    if last < anchor.seq {
        return Comparison::Truncated { anchored: anchor.seq, last };
    }
    match hash_at_anchor {
        Some(found) if found == anchor.hash.as_slice() => Comparison::Extends { behind: last - anchor.seq },
        found => Comparison::Rewritten { seq: anchor.seq, found: found.map(<[u8]>::to_vec) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const KEY_B: &str = "HxweHRwbGhkYFxYVFBMSERAPDg0MCwoJCAcGBQQDAgE=";

    fn head(seq: i64) -> ChainHead {
        ChainHead { seq, hash: vec![seq as u8; 32], recorded_at: Utc::now() }
    }

    #[test]
    fn signed_anchors_verify_and_round_trip_through_the_stored_form() {
        let keys = SealingKeys::new("k1", KEY_A, &[]).expect("key");
        let anchor = Anchor::sign(&head(7), &keys).expect("sign");
        assert_eq!(anchor.mac.len(), 32);
        anchor.verify(&keys).expect("verifies");
        let read = Anchor::from_data(&anchor.to_data()).expect("parses");
        assert_eq!(read, anchor);
        read.verify(&keys).expect("verifies after the round trip");
        // Rotation: an anchor made under the old key still verifies while that key is configured.
        let rotated = SealingKeys::new("k2", KEY_B, &[("k1".into(), KEY_A.into())]).expect("keys");
        anchor.verify(&rotated).expect("old key still configured");
        assert_eq!(Anchor::sign(&head(7), &rotated).expect("sign").key_id, "k2");
    }

    #[test]
    fn any_changed_field_or_another_key_fails_the_mac() {
        let keys = SealingKeys::new("k1", KEY_A, &[]).expect("key");
        let anchor = Anchor::sign(&head(7), &keys).expect("sign");
        let changes: [fn(&mut Anchor); 5] = [
            |a| a.seq += 1,
            |a| a.hash[0] ^= 1,
            |a| a.recorded_at += chrono::Duration::microseconds(1),
            |a| a.published_at += chrono::Duration::microseconds(1),
            |a| a.mac[31] ^= 1,
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut altered = anchor.clone();
            change(&mut altered);
            assert_eq!(altered.verify(&keys), Err(AnchorError::BadMac("k1".into())), "change {i}");
        }
        let other = SealingKeys::new("k1", KEY_B, &[]).expect("key");
        assert_eq!(anchor.verify(&other), Err(AnchorError::BadMac("k1".into())));
        let mut renamed = anchor.clone();
        renamed.key_id = "k9".into();
        assert_eq!(renamed.verify(&keys), Err(AnchorError::UnknownKey("k9".into())));
    }

    #[test]
    fn malformed_stored_forms_are_refused() {
        let keys = SealingKeys::new("k1", KEY_A, &[]).expect("key");
        let data = Anchor::sign(&head(3), &keys).expect("sign").to_data();
        for (field, value) in [("seq", "x"), ("hash", "zz"), ("recordedAt", "yesterday"), ("format", "v0")] {
            let mut bad = data.clone();
            bad.insert(field.into(), value.into());
            assert!(matches!(Anchor::from_data(&bad), Err(AnchorError::Malformed(_))), "{field}");
        }
        let mut missing = data;
        missing.remove("hmac");
        assert_eq!(Anchor::from_data(&missing), Err(AnchorError::Malformed("no hmac".into())));
    }

    #[test]
    fn comparison_tells_lag_truncation_and_rewriting_apart() {
        let keys = SealingKeys::new("k1", KEY_A, &[]).expect("key");
        let anchor = Anchor::sign(&head(5), &keys).expect("sign");
        let same = anchor.hash.clone();
        assert_eq!(compare(&anchor, Some(&head(5)), Some(&same)), Comparison::Extends { behind: 0 });
        assert_eq!(compare(&anchor, Some(&head(7)), Some(&same)), Comparison::Extends { behind: 2 });
        assert_eq!(compare(&anchor, Some(&head(3)), None), Comparison::Truncated { anchored: 5, last: 3 });
        assert_eq!(compare(&anchor, None, None), Comparison::Truncated { anchored: 5, last: 0 });
        let other = vec![9; 32];
        assert_eq!(
            compare(&anchor, Some(&head(6)), Some(&other)),
            Comparison::Rewritten { seq: 5, found: Some(other.clone()) }
        );
        assert_eq!(compare(&anchor, Some(&head(6)), None), Comparison::Rewritten { seq: 5, found: None });
    }
}
