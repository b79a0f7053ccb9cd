//! painn: PaiNN machine-learned force fields for molecular dynamics, on CUDA GPUs and CPUs.
//!
//! One path for every caller (see `README.md`, "Design notes"):
//!
//! ```text
//! System (Z, positions, cell, pbc) -> NeighborList -> Backend (cpu | cuda) runs the Model -> Results
//! ```

pub mod backend;
pub mod calculator;
pub mod capi;
pub mod cell;
mod disjoint;
pub mod error;
pub mod io;
pub mod model;
pub mod neighbors;
pub mod structures;

pub use backend::{GhostExchange, Request, Results};
pub use calculator::{Calculator, CalculatorOptions, Device, Precision};
pub use cell::Cell;
pub use error::{Error, Result};
pub use model::Model;
pub use neighbors::{NeighborList, NeighborListOptions};

/// Version of this crate, as `major.minor.patch`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
