//! Status codes, the per-thread last error message, and the boundary every exported
//! function goes through (errors become codes, panics never cross).

use std::cell::RefCell;
use std::ffi::{CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::error::Error;

/// Status returned by every function: 0 on success.
pub type painn_status_t = i32;

/// Success.
pub const PAINN_SUCCESS: painn_status_t = 0;
/// A bad argument: NULL pointer, negative count, non-finite coordinate, unknown element,
/// impossible cell, atoms on top of each other, unknown device or precision.
pub const PAINN_INVALID_ARGUMENT: painn_status_t = 1;
/// A model file that is unreadable as a model: truncated, corrupt, inconsistent, unknown
/// format.
pub const PAINN_MODEL_ERROR: painn_status_t = 2;
/// A file could not be read.
pub const PAINN_IO_ERROR: painn_status_t = 3;
/// The CUDA driver, NVRTC or a GPU failed, or no GPU is present.
pub const PAINN_CUDA_ERROR: painn_status_t = 4;
/// A valid request this build or model cannot serve (e.g. float64 on the GPU).
pub const PAINN_UNSUPPORTED: painn_status_t = 5;
/// A bug in painn (a caught panic); the message says where.
pub const PAINN_INTERNAL_ERROR: painn_status_t = 255;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    let message = CString::new(message.replace('\0', " ")).expect("no NUL left");
    LAST_ERROR.with(|last| *last.borrow_mut() = message);
}

/// The message of the last failed call on this thread (empty if none). The pointer stays
/// valid until the next failing call on this thread.
#[unsafe(no_mangle)]
pub extern "C" fn painn_last_error() -> *const c_char {
    LAST_ERROR.with(|last| last.borrow().as_ptr())
}

fn status_of(error: &Error) -> painn_status_t {
    match error {
        Error::InvalidArgument { .. }
        | Error::NonFinite { .. }
        | Error::BadCell { .. }
        | Error::AtomsTooClose { .. }
        | Error::UnknownElement { .. }
        | Error::Parse { .. } => PAINN_INVALID_ARGUMENT,
        Error::Model { .. } => PAINN_MODEL_ERROR,
        Error::Io { .. } => PAINN_IO_ERROR,
        Error::Cuda(_) => PAINN_CUDA_ERROR,
        Error::Unsupported(_) | Error::OutOfMemory { .. } => PAINN_UNSUPPORTED,
    }
}

/// Runs `body` at the boundary: its error becomes a status and the thread's last error, a
/// panic becomes `PAINN_INTERNAL_ERROR`.
pub(super) fn catch(body: impl FnOnce() -> Result<(), Error>) -> painn_status_t {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => PAINN_SUCCESS,
        Ok(Err(error)) => {
            set_last_error(&error.to_string());
            status_of(&error)
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!("internal error (please report): {what}"));
            PAINN_INTERNAL_ERROR
        }
    }
}

/// An invalid-argument error naming the argument.
pub(super) fn invalid(argument: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidArgument {
        argument,
        reason: reason.into(),
    }
}
