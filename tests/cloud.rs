//! Integration tests of the cloud layer: the operator's Rust clients against the sandbox's
//! Hetzner and Cloudflare simulators, the shared rate limiter, secrets that never leak, and a
//! fault-injected 200-operation run. (The simulators' own tests live in `sandbox/tests`.)
//! One test binary (each extra one costs a long link); the topics live in `tests/cloud/`.

mod cloud {
    mod cloudflare;
    mod faults;
    mod glamp_store;
    mod hetzner;
    mod limits;
    mod secrets;
}
