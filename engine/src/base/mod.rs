//! Foundations every layer uses: errors, the `Clock` seam, the seeded RNG, the
//! parallel-I/O seam (`io`), hooks for the simulator, byte budgets, units, policies and
//! the zero scan.
//! Imports nothing else of the engine.

pub(crate) mod budget;
pub mod clock;
pub mod error;
pub mod hooks;
pub(crate) mod io;
pub mod policy;
pub mod rng;
pub mod units;
pub mod zeros;
