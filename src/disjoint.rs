//! Handing out disjoint parts of one mutable slice to several threads: the one place where
//! the engine shares a `&mut [T]` between threads that each write their own part (the rows of
//! a neighbour list, the blocks of a molecule's parallel loops, the column ranges of a product
//! split between two threads). The safety argument is the same as `split_at_mut`'s, with the
//! split points known only inside the parallel loop.

use std::marker::PhantomData;
use std::ops::Range;

/// A mutable slice whose parts are handed out by [`part`](DisjointParts::part), each to one
/// thread, never two overlapping parts at once.
pub struct DisjointParts<'a, T> {
    pointer: *mut T,
    len: usize,
    _borrow: PhantomData<&'a mut [T]>,
}

// SAFETY: the parts handed out are disjoint (`part`'s contract), so sending or sharing the
// handle gives each thread exclusive access to its own part, as `split_at_mut` would.
unsafe impl<T: Send> Send for DisjointParts<'_, T> {}
unsafe impl<T: Send> Sync for DisjointParts<'_, T> {}

impl<'a, T> DisjointParts<'a, T> {
    /// Takes the slice for as long as the parts may be used.
    pub fn new(values: &'a mut [T]) -> Self {
        DisjointParts {
            pointer: values.as_mut_ptr(),
            len: values.len(),
            _borrow: PhantomData,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The values in `range` (bounds are checked; a range outside the slice panics).
    ///
    /// # Safety
    /// No other part alive at the same time may overlap `range`.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn part(&self, range: Range<usize>) -> &mut [T] {
        assert!(
            range.start <= range.end && range.end <= self.len,
            "part {range:?} of a slice of {}",
            self.len
        );
        // SAFETY: in bounds (checked above); disjoint from every other live part (the
        // caller's contract), and the borrow of the whole slice outlives the handle.
        unsafe { std::slice::from_raw_parts_mut(self.pointer.add(range.start), range.len()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_written_by_several_threads_land_in_place() {
        let mut values = vec![0u32; 1000];
        let parts = DisjointParts::new(&mut values);
        std::thread::scope(|scope| {
            for t in 0..4usize {
                let parts = &parts;
                scope.spawn(move || {
                    // SAFETY: thread t writes 250 t..250 (t + 1) only.
                    let part = unsafe { parts.part(250 * t..250 * (t + 1)) };
                    part.iter_mut().for_each(|v| *v = t as u32 + 1);
                });
            }
        });
        assert!(
            values
                .chunks(250)
                .enumerate()
                .all(|(t, c)| c.iter().all(|&v| v == t as u32 + 1))
        );
    }

    #[test]
    #[should_panic(expected = "part 5..11 of a slice of 10")]
    fn a_part_past_the_end_panics() {
        let mut values = [0u8; 10];
        let parts = DisjointParts::new(&mut values);
        // SAFETY: the only part.
        let _ = unsafe { parts.part(5..11) };
    }
}
