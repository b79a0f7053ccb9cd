//! One error type for the whole engine. Every message names what is wrong (the argument, the
//! atom, the file, the tensor) so that it can be handed unchanged to a LAMMPS, ASE or C user.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A caller-supplied argument is out of its domain (a cutoff <= 0, mismatched lengths, ...).
    #[error("invalid argument `{argument}`: {reason}")]
    InvalidArgument {
        argument: &'static str,
        reason: String,
    },

    /// A coordinate or lattice vector is NaN or infinite.
    #[error("non-finite value in {what}")]
    NonFinite { what: String },

    /// The cell cannot be used on the axes declared periodic.
    #[error("impossible cell: {reason}")]
    BadCell { reason: String },

    /// Two distinct atoms (or an atom and an image of another) sit on top of each other.
    #[error(
        "atoms {first} and {second} (image shift {shift:?}) are {distance_angstrom:.3e} Angstrom apart, \
         closer than the minimum of {minimum_angstrom:e} Angstrom"
    )]
    AtomsTooClose {
        first: usize,
        second: usize,
        shift: [i32; 3],
        distance_angstrom: f64,
        minimum_angstrom: f64,
    },

    /// An atomic number that the model cannot embed.
    #[error("atom {atom} has atomic number {z}, outside the model's range 1..={max_z}")]
    UnknownElement { atom: usize, z: i64, max_z: usize },

    /// A model file that is unreadable, truncated, inconsistent or of an unknown format.
    #[error("model {source_name}: {reason}")]
    Model { source_name: String, reason: String },

    /// A malformed structure file.
    #[error("{path}:{line}: {reason}")]
    Parse {
        path: String,
        line: usize,
        reason: String,
    },

    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The CUDA driver, NVRTC or a kernel failed, or no GPU is present.
    #[error("CUDA: {0}")]
    Cuda(String),

    /// A request this build or this model cannot serve.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl Error {
    pub(crate) fn invalid(argument: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            argument,
            reason: reason.into(),
        }
    }
}
