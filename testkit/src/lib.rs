//! The fixtures the operator's integration tests and benchmarks (and the sandbox's simulator
//! tests) share: a dev-dependency only, never part of a binary. Each test binary links it once
//! and uses what its scenarios need; nothing here asserts behaviour of its own.

pub mod cloud;
pub mod cloud_init_schema;
pub mod db;
pub mod fixture;
pub mod helm;
pub mod kube_server;
pub mod logs;

use std::path::{Path, PathBuf};

/// The repository's root (the workspace's), where the README, `crds/` and the chart live.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("testkit/ sits in the repository's root").to_path_buf()
}
