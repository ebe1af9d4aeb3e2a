//! Foundation tests: generated CRDs, admission of the example manifests, and the PostgreSQL
//! store (audit trail, usage timeline, keys, sealed credentials) against a real server.

mod foundation {
    pub mod admission;
    pub mod crds;
    pub mod db;
    pub mod store;
}
