//! Foundation tests: generated CRDs and the PostgreSQL
//! store (audit trail, usage timeline, keys, sealed credentials) against a real server.

mod foundation {
    // The test database, from the test kit (testkit/).
    use crabglamp_testkit::db;
    pub mod crds;
    pub mod store;
}
