//! The cloud simulators and the admission module judged by outside references: the `hcloud`
//! crate's models (generated from Hetzner's OpenAPI document), the official Python clients,
//! the raw HTTP envelopes of the real APIs, the standalone `sim` command, and every manifest
//! in `examples/` and `examples/invalid/` through admission.
//! One test binary (each extra one costs a long link); the topics live in `tests/sims/`.

mod sims {
    mod admission;
    mod cli;
    mod cloudflare_connectors;
    mod control_api;
    mod envelopes;
    mod hetzner_physics;
    mod models;
    mod python;
}
