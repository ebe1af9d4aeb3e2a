//! Where published glamps live in S3-compatible object storage (Tigris, or any S3-compatible
//! store), and the short-lived presigned URLs a server downloads one with: the storage
//! credentials stay in the operator's environment, and each server gets URLs that open one
//! object, for one method, until they expire. A presigned URL is itself a credential until then,
//! so it is only ever handed out as a [`Secret`].
//!
//! The layout under the configured prefix: `glamps/<name>/<version>/glamp.tar.gz` (the
//! package) and `glamps/<name>/<version>/manifest.json` (its digest and files).
//!
//! Signing is SigV4 in query-string form, by `rusty-s3`: deterministic for the same
//! credentials, time, bucket, key and expiry, which `tests/cloud/glamp_store.rs` checks against
//! botocore's presigner byte for byte.

use std::fmt;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use super::Secret;

/// How long a presigned URL stays valid by default: long enough for a server to boot and
/// download, short enough that a leaked URL is soon useless.
pub const DEFAULT_URL_EXPIRY: Duration = Duration::from_secs(15 * 60);
/// SigV4's longest presigned expiry (seven days).
const MAX_URL_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

/// The object storage's settings, as the operator is configured with them.
pub struct GlampStoreSettings {
    /// The store's base URL, e.g. `https://fly.storage.tigris.dev`.
    pub endpoint: String,
    pub bucket: String,
    /// The signing region: `auto` for Tigris, the bucket's region for AWS.
    pub region: String,
    /// Prepended to every key (empty, or ending in `/`).
    pub prefix: String,
    /// `https://<endpoint>/<bucket>/<key>` rather than `https://<bucket>.<endpoint>/<key>`.
    pub path_style: bool,
    pub access_key_id: Secret,
    pub secret_access_key: Secret,
    pub url_expiry: Duration,
}

/// Why the settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum GlampStoreError {
    #[error("glamp storage endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("glamp storage bucket {bucket:?}: {reason}")]
    Bucket { bucket: String, reason: String },
    #[error("glamp storage URL expiry {expiry:?}: must be between 1 second and 7 days")]
    Expiry { expiry: Duration },
}

/// A bucket of published glamps and the credentials to sign for it.
pub struct GlampStore {
    bucket: Bucket,
    credentials: Credentials,
    prefix: String,
    url_expiry: Duration,
}

/// Never the credentials (rusty-s3's own `Debug` of them would show the key id).
impl fmt::Debug for GlampStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GlampStore")
            .field("endpoint", &self.bucket.base_url().as_str())
            .field("bucket", &self.bucket.name())
            .field("region", &self.bucket.region())
            .field("prefix", &self.prefix)
            .field("url_expiry", &self.url_expiry)
            .finish_non_exhaustive()
    }
}

impl GlampStore {
    pub fn new(settings: GlampStoreSettings) -> Result<Self, GlampStoreError> {
        let endpoint = url::Url::parse(&settings.endpoint)
            .map_err(|e| GlampStoreError::Endpoint { endpoint: settings.endpoint.clone(), reason: e.to_string() })?;
        if settings.url_expiry.is_zero() || settings.url_expiry > MAX_URL_EXPIRY {
            return Err(GlampStoreError::Expiry { expiry: settings.url_expiry });
        }
        let style = if settings.path_style { UrlStyle::Path } else { UrlStyle::VirtualHost };
        let bucket = Bucket::new(endpoint, style, settings.bucket.clone(), settings.region)
            .map_err(|e| GlampStoreError::Bucket { bucket: settings.bucket.clone(), reason: e.to_string() })?;
        Ok(GlampStore {
            bucket,
            credentials: Credentials::new(
                settings.access_key_id.expose().to_owned(),
                settings.secret_access_key.expose().to_owned(),
            ),
            prefix: settings.prefix,
            url_expiry: settings.url_expiry,
        })
    }

    /// The key of a published version's package.
    pub fn tarball_key(&self, name: &str, version: &str) -> String {
        self.key(name, version, "glamp.tar.gz")
    }

    /// The key of a published version's manifest (its digest and files).
    pub fn manifest_key(&self, name: &str, version: &str) -> String {
        self.key(name, version, "manifest.json")
    }

    fn key(&self, name: &str, version: &str, file: &str) -> String {
        format!("{}glamps/{name}/{version}/{file}", self.prefix)
    }

    /// How long the URLs this store signs stay valid.
    pub fn url_expiry(&self) -> Duration {
        self.url_expiry
    }

    /// A URL that GETs `key`, valid for the store's expiry from `now`.
    pub fn presign_get(&self, key: &str, now: Timestamp) -> Secret {
        Secret::new(self.bucket.get_object(Some(&self.credentials), key).sign_with_time(self.url_expiry, &now))
    }

    /// A URL that HEADs `key` (whether a version is published), valid for the store's expiry
    /// from `now`.
    pub fn presign_head(&self, key: &str, now: Timestamp) -> Secret {
        Secret::new(self.bucket.head_object(Some(&self.credentials), key).sign_with_time(self.url_expiry, &now))
    }
}

/// Tigris's endpoint, for the defaults a user on the CrabGlamp platform gets.
pub const TIGRIS_ENDPOINT: &str = "https://fly.storage.tigris.dev";
/// Tigris signs in one region for every location.
pub const TIGRIS_REGION: &str = "auto";

#[cfg(test)]
mod tests {
    use super::*;

    fn store(expiry: Duration) -> Result<GlampStore, GlampStoreError> {
        GlampStore::new(GlampStoreSettings {
            endpoint: TIGRIS_ENDPOINT.into(),
            bucket: "glamps".into(),
            region: TIGRIS_REGION.into(),
            prefix: "published/".into(),
            path_style: false,
            access_key_id: Secret::new("tid_EXAMPLE"),
            secret_access_key: Secret::new("tsec_EXAMPLE_SECRET"),
            url_expiry: expiry,
        })
    }

    #[test]
    fn keys_follow_the_published_layout() {
        let s = store(DEFAULT_URL_EXPIRY).expect("store");
        assert_eq!(s.tarball_key("crab", "1.2.0"), "published/glamps/crab/1.2.0/glamp.tar.gz");
        assert_eq!(s.manifest_key("crab", "1.2.0"), "published/glamps/crab/1.2.0/manifest.json");
    }

    #[test]
    fn a_url_opens_one_object_until_it_expires_and_is_never_printed() {
        let s = store(DEFAULT_URL_EXPIRY).expect("store");
        let now: Timestamp = "2026-12-07T12:00:00Z".parse().expect("time");
        let url = s.presign_get(&s.tarball_key("crab", "1.2.0"), now);
        let exposed = url.expose();
        assert!(exposed.starts_with("https://glamps.fly.storage.tigris.dev/published/glamps/crab/1.2.0/glamp.tar.gz?"));
        assert!(exposed.contains("X-Amz-Expires=900"), "{exposed}");
        assert!(exposed.contains("X-Amz-Date=20261207T120000Z"), "{exposed}");
        assert!(exposed.contains("%2Fauto%2Fs3%2Faws4_request"), "{exposed}");
        // Deterministic: the same inputs sign the same URL; another second signs another.
        assert_eq!(s.presign_get(&s.tarball_key("crab", "1.2.0"), now).expose(), exposed);
        let later = now.checked_add(jiff_second()).expect("time");
        assert_ne!(s.presign_get(&s.tarball_key("crab", "1.2.0"), later).expose(), exposed);
        for shown in [format!("{url}"), format!("{url:?}"), format!("{s:?}")] {
            assert!(
                !shown.contains("X-Amz-Signature") && !shown.contains("tsec_") && !shown.contains("tid_"),
                "{shown}"
            );
        }
    }

    fn jiff_second() -> k8s_openapi::jiff::Span {
        k8s_openapi::jiff::Span::new().seconds(1)
    }

    #[test]
    fn settings_out_of_bounds_are_refused_with_what_is_wrong() {
        assert!(matches!(store(Duration::ZERO), Err(GlampStoreError::Expiry { .. })));
        assert!(matches!(store(MAX_URL_EXPIRY + Duration::from_secs(1)), Err(GlampStoreError::Expiry { .. })));
        let bad = GlampStore::new(GlampStoreSettings {
            endpoint: "not a url".into(),
            bucket: "glamps".into(),
            region: "auto".into(),
            prefix: String::new(),
            path_style: true,
            access_key_id: Secret::new("tid_EXAMPLE"),
            secret_access_key: Secret::new("tsec_EXAMPLE_SECRET"),
            url_expiry: DEFAULT_URL_EXPIRY,
        });
        let message = bad.expect_err("refused").to_string();
        assert!(message.contains("not a url") && !message.contains("tsec_"), "{message}");
    }
}
