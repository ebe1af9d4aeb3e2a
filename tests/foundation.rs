//! Foundation tests: generated CRDs and the PostgreSQL
//! store (audit trail, usage timeline, keys, sealed credentials) against a real server.

mod foundation {
    pub mod crds;
    pub mod db;
    pub mod store;
}
