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

    /// A buffer sized from the input could not be allocated (the sizes were checked first,
    /// so the machine is short of memory for an input that is otherwise valid).
    #[error("out of memory: cannot allocate {} for {what}", bytes_text(*bytes))]
    OutOfMemory { what: String, bytes: usize },
}

impl Error {
    pub(crate) fn invalid(argument: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            argument,
            reason: reason.into(),
        }
    }
}

/// Makes room for `additional` more values in `buffer` (amortised growth, as
/// [`Vec::reserve`]), or returns [`Error::OutOfMemory`] naming `what` the buffer holds:
/// every buffer whose size comes from the input grows through this, never by aborting.
pub(crate) fn try_reserve<T>(
    buffer: &mut Vec<T>,
    additional: usize,
    what: impl FnOnce() -> String,
) -> Result<()> {
    buffer
        .try_reserve(additional)
        .map_err(|_| Error::OutOfMemory {
            what: what(),
            bytes: buffer
                .len()
                .saturating_add(additional)
                .saturating_mul(std::mem::size_of::<T>()),
        })
}

/// A count with thousands separators: `4,210`.
pub(crate) fn grouped(count: usize) -> String {
    let digits = count.to_string();
    let mut text = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            text.push(',');
        }
        text.push(digit);
    }
    text
}

/// A byte count for people: `48.0 GB (48,000,000,000 bytes)`.
pub(crate) fn bytes_text(bytes: usize) -> String {
    const UNITS: [(f64, &str); 4] = [(1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")];
    match UNITS.iter().find(|(size, _)| bytes as f64 >= *size) {
        Some((size, unit)) => format!(
            "{:.1} {unit} ({} bytes)",
            bytes as f64 / size,
            grouped(bytes)
        ),
        None => format!("{bytes} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(4210), "4,210");
        assert_eq!(grouped(1_000_000), "1,000,000");
        assert_eq!(bytes_text(12), "12 bytes");
        assert_eq!(bytes_text(48_000_000_000), "48.0 GB (48,000,000,000 bytes)");
        let mut huge: Vec<u64> = Vec::new();
        let err = try_reserve(&mut huge, usize::MAX / 4, || "a test buffer".into()).unwrap_err();
        assert!(
            matches!(err, Error::OutOfMemory { .. }) && err.to_string().contains("a test buffer"),
            "{err}"
        );
    }
}
