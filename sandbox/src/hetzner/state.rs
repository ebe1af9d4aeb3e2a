//! The state one simulated Hetzner project shares between its API routes, its control routes
//! and its test hooks.

use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use super::world::World;
use crate::http::lock;

pub struct HzState {
    pub world: Mutex<World>,
}

impl HzState {
    /// The project, locked and advanced to now: every reader sees the actions that have
    /// finished by the time it looks.
    pub fn world(&self) -> MutexGuard<'_, World> {
        let mut w = lock(&self.world);
        w.advance(Instant::now());
        w
    }
}
