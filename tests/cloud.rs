//! Integration tests of the cloud layer: the Rust clients against the in-process Hetzner and
//! Cloudflare simulators, the simulators against the `hcloud` crate's models and the official
//! Python clients, the shared rate limiter, and a fault-injected 200-operation run.
//! One test binary (each extra one costs a long link); the topics live in `tests/cloud/`.

mod cloud {
    mod support;

    mod cli;
    mod cloudflare;
    mod envelopes;
    mod faults;
    mod hetzner;
    mod limits;
    mod models;
    mod python;
    mod secrets;
}
