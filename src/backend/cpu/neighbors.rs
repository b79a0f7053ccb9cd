//! Stage `build_neighbor_list` on the CPU (mirrors `cuda/neighbors.rs` and
//! `cuda/neighbors.cu`): the cell list of [`crate::neighbors`], rebuilt in place so that an MD
//! step that re-neighbours allocates nothing once sizes have settled.

use crate::cell::Cell;
use crate::error::Result;
use crate::neighbors::{NeighborLimits, NeighborList, NeighborListOptions};

/// Builds (or rebuilds in place) the list of every pair within `search_radius_angstrom`,
/// within `limits`.
pub fn build_neighbor_list(
    list: &mut Option<NeighborList>,
    positions: &[[f64; 3]],
    cell: &Cell,
    search_radius_angstrom: f64,
    limits: NeighborLimits,
) -> Result<()> {
    match list {
        Some(list)
            if list.options().search_radius_angstrom() == search_radius_angstrom
                && list.options().limits == limits =>
        {
            list.rebuild(positions, cell)
        }
        _ => {
            *list = None;
            let options = NeighborListOptions::new(search_radius_angstrom).with_limits(limits);
            *list = Some(NeighborList::build(positions, cell, options)?);
            Ok(())
        }
    }
}
