//! The engine's parallel loops: on the rayon pool for large systems; in order on the calling
//! thread for a molecule ([`in_order`]), whose loops are too short to share through the
//! pool (each would wake a sleeping worker and put the caller to sleep until it is done:
//! tens of microseconds on a virtual machine, a tenth of a benzene call).
//!
//! A molecule evaluated with a [`super::team`] splits its dense products and message rows
//! between two threads through the team, and runs the loops here in order as well.
//! Loop bodies receive the chunk index, so the arithmetic is the same in either mode.

use std::cell::Cell;

use rayon::prelude::*;

thread_local! {
    /// Whether this thread runs the engine's loops in order, here.
    static IN_ORDER: Cell<bool> = const { Cell::new(false) };
}

/// Runs `body` with this thread's engine loops in order, here, instead of on the pool.
pub fn in_order<R>(body: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            IN_ORDER.with(|flag| flag.set(self.0));
        }
    }
    let _restore = Restore(IN_ORDER.with(|flag| flag.replace(true)));
    body()
}

/// Whether the engine's loops run in order on this thread.
pub fn runs_in_order() -> bool {
    IN_ORDER.with(|flag| flag.get())
}

/// `body(index, chunk)` for each chunk of `values.chunks_mut(size)`.
pub fn for_each_chunk<A: Send>(
    values: &mut [A],
    size: usize,
    body: impl Fn(usize, &mut [A]) + Sync + Send,
) {
    if runs_in_order() {
        values
            .chunks_mut(size)
            .enumerate()
            .for_each(|(index, chunk)| body(index, chunk));
    } else {
        values
            .par_chunks_mut(size)
            .enumerate()
            .for_each(|(index, chunk)| body(index, chunk));
    }
}

/// `body(index, a_chunk, b_chunk)` for the chunks of `a` (of `a_size`) and `b` (of `b_size`)
/// taken side by side.
pub fn for_each_chunk_pair<A: Send, B: Send>(
    a: &mut [A],
    a_size: usize,
    b: &mut [B],
    b_size: usize,
    body: impl Fn(usize, &mut [A], &mut [B]) + Sync + Send,
) {
    if runs_in_order() {
        a.chunks_mut(a_size)
            .zip(b.chunks_mut(b_size))
            .enumerate()
            .for_each(|(index, (a, b))| body(index, a, b));
    } else {
        a.par_chunks_mut(a_size)
            .zip(b.par_chunks_mut(b_size))
            .enumerate()
            .for_each(|(index, (a, b))| body(index, a, b));
    }
}

/// `body(input_chunk, output_chunk)` for the chunks of `input` (of `input_size`) and
/// `output` (of `output_size`) taken side by side.
pub fn for_each_chunk_into<A: Sync, B: Send>(
    input: &[A],
    input_size: usize,
    output: &mut [B],
    output_size: usize,
    body: impl Fn(&[A], &mut [B]) + Sync + Send,
) {
    if runs_in_order() {
        input
            .chunks(input_size)
            .zip(output.chunks_mut(output_size))
            .for_each(|(input, output)| body(input, output));
    } else {
        input
            .par_chunks(input_size)
            .zip(output.par_chunks_mut(output_size))
            .for_each(|(input, output)| body(input, output));
    }
}

/// `[body(0), body(1), ..., body(n - 1)]`.
pub fn map_indices<R: Send>(n: usize, body: impl Fn(usize) -> R + Sync + Send) -> Vec<R> {
    if runs_in_order() {
        (0..n).map(body).collect()
    } else {
        (0..n).into_par_iter().map(body).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every helper visits the same chunks with the same indices in both modes.
    #[test]
    fn both_modes_visit_the_same_chunks() {
        let run = || {
            let mut a: Vec<u64> = vec![0; 23];
            let mut b: Vec<u64> = vec![0; 46];
            for_each_chunk(&mut a, 4, |index, chunk| {
                chunk.iter_mut().for_each(|x| *x += index as u64 + 1)
            });
            for_each_chunk_pair(&mut a, 3, &mut b, 6, |index, a, b| {
                a[0] += 100 * index as u64;
                b[b.len() - 1] += a.len() as u64 + index as u64;
            });
            let input: Vec<u64> = (0..23).collect();
            let mut output = vec![0u64; 46];
            for_each_chunk_into(&input, 5, &mut output, 10, |input, output| {
                output[0] = input.iter().sum();
            });
            let squares = map_indices(9, |i| i * i);
            (a, b, output, squares)
        };
        let pooled = run();
        assert!(!runs_in_order());
        let here = in_order(run);
        assert!(!runs_in_order(), "the flag is restored");
        assert_eq!(pooled, here);
        assert_eq!(pooled.0[0], 1);
        assert_eq!(pooled.0[3], 1 + 100);
        assert_eq!(pooled.1[5], 3);
        assert_eq!(pooled.2[10], 5 + 6 + 7 + 8 + 9);
        assert_eq!(pooled.3[8], 64);
    }
}
