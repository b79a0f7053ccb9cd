//! Structure files.

pub mod elements;
pub mod xyz;
