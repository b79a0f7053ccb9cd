//! Device buffers that grow geometrically and are reused from call to call: once sizes have
//! settled, a call allocates nothing.

use std::marker::PhantomData;

use cudarc::driver::{result, sys};

use crate::error::{Error, Result};

/// Growth factor when a buffer is too small.
const GROWTH: f64 = 1.5;

/// A typed device allocation, freed on drop. Holds `capacity` elements of `T`.
pub struct DeviceBuffer<T> {
    pointer: sys::CUdeviceptr,
    capacity: usize,
    marker: PhantomData<T>,
}

// SAFETY: the buffer is plain device memory owned by this value; the context that owns it is
// made current by the backend on whichever thread uses it.
unsafe impl<T> Send for DeviceBuffer<T> {}

impl<T> Default for DeviceBuffer<T> {
    fn default() -> Self {
        DeviceBuffer {
            pointer: 0,
            capacity: 0,
            marker: PhantomData,
        }
    }
}

pub(super) fn driver(call: &str, error: result::DriverError) -> Error {
    Error::Cuda(format!("{call}: {error}"))
}

impl<T> DeviceBuffer<T> {
    /// Makes room for at least `len` elements (contents are not preserved when it grows).
    pub fn reserve(&mut self, len: usize) -> Result<()> {
        if len <= self.capacity && self.pointer != 0 {
            return Ok(());
        }
        let capacity = if self.capacity == 0 {
            len.max(1)
        } else {
            len.max((self.capacity as f64 * GROWTH) as usize)
        };
        self.release();
        let bytes = capacity * std::mem::size_of::<T>();
        // SAFETY: a plain allocation; the pointer is owned by self from here on.
        let pointer = unsafe { result::malloc_sync(bytes) }.map_err(|e| {
            Error::Cuda(format!(
                "allocating {bytes} bytes of GPU memory failed ({e}): the system is too large \
                 for this GPU"
            ))
        })?;
        self.pointer = pointer;
        self.capacity = capacity;
        Ok(())
    }

    /// Exactly `len` elements of room, releasing a larger allocation (for the edge arrays,
    /// whose size is known ahead).
    pub fn reserve_exact(&mut self, len: usize) -> Result<()> {
        if len <= self.capacity && self.pointer != 0 {
            return Ok(());
        }
        self.release();
        self.capacity = 0;
        self.reserve(len)
    }

    /// The raw device address, for kernel arguments (0 when unallocated).
    pub fn pointer(&self) -> u64 {
        self.pointer
    }

    /// The address of element `index`.
    pub fn at(&self, index: usize) -> u64 {
        self.pointer + (index * std::mem::size_of::<T>()) as u64
    }

    fn release(&mut self) {
        if self.pointer != 0 {
            // SAFETY: allocated by malloc_sync and not freed since.
            unsafe {
                let _ = result::free_sync(self.pointer);
            }
            self.pointer = 0;
            self.capacity = 0;
        }
    }

    pub fn bytes(&self) -> usize {
        self.capacity * std::mem::size_of::<T>()
    }
}

impl<T> Drop for DeviceBuffer<T> {
    fn drop(&mut self) {
        self.release();
    }
}
