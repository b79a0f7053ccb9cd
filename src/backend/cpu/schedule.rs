//! How the CPU stages run their loops, passed to every stage as a value: on rayon's pool
//! (large systems), in order on the calling thread (a molecule), or in order with a second
//! thread taking blocks through a [`Team`] (a molecule, two threads).
//!
//! A molecule's ~40 loops are too short to share through the pool: each would wake a
//! sleeping worker and put the caller to sleep until it is done, tens of microseconds on a
//! virtual machine, a tenth of a benzene call. Loop bodies receive the chunk or block index,
//! and task sizes depend on the atom count only, so the arithmetic, hence every bit of the
//! results, is the same in every schedule and for any number of threads.

use rayon::prelude::*;

use super::team::Team;

/// Where a stage's loops run.
#[derive(Clone, Copy)]
pub enum Schedule<'a> {
    /// On rayon's pool.
    Pool,
    /// In order on the calling thread.
    InOrder,
    /// In order on the calling thread, with blocks ([`Schedule::for_each_block`]) and
    /// products split by columns shared with the team's second thread.
    Team(&'a Team),
}

impl Schedule<'_> {
    /// Whether the loops run on this thread (a molecule's schedules).
    pub fn in_order(self) -> bool {
        !matches!(self, Schedule::Pool)
    }

    /// Whether a second thread shares blocks (products split by columns pay only then).
    pub fn has_team(self) -> bool {
        matches!(self, Schedule::Team(_))
    }

    /// `body(index, chunk)` for each chunk of `values.chunks_mut(size)`.
    pub fn for_each_chunk<A: Send>(
        self,
        values: &mut [A],
        size: usize,
        body: impl Fn(usize, &mut [A]) + Sync + Send,
    ) {
        if self.in_order() {
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

    /// `body(index, a_chunk, b_chunk)` for the chunks of `a` (of `a_size`) and `b` (of
    /// `b_size`) taken side by side.
    pub fn for_each_chunk_pair<A: Send, B: Send>(
        self,
        a: &mut [A],
        a_size: usize,
        b: &mut [B],
        b_size: usize,
        body: impl Fn(usize, &mut [A], &mut [B]) + Sync + Send,
    ) {
        if self.in_order() {
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
        self,
        input: &[A],
        input_size: usize,
        output: &mut [B],
        output_size: usize,
        body: impl Fn(&[A], &mut [B]) + Sync + Send,
    ) {
        if self.in_order() {
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
    pub fn map_indices<R: Send>(self, n: usize, body: impl Fn(usize) -> R + Sync + Send) -> Vec<R> {
        if self.in_order() {
            (0..n).map(body).collect()
        } else {
            (0..n).into_par_iter().map(body).collect()
        }
    }

    /// `body(&mut scratch, block)` for every block in `0..n_blocks`, each block once: on the
    /// pool (scratch made once per worker task by `init`), in order here (one scratch), or
    /// on both threads of the team (one scratch per block).
    pub fn for_each_block<S>(
        self,
        n_blocks: usize,
        init: impl Fn() -> S + Sync + Send,
        body: impl Fn(&mut S, usize) + Sync + Send,
    ) {
        match self {
            Schedule::Pool => (0..n_blocks)
                .into_par_iter()
                .for_each_init(init, |scratch, block| body(scratch, block)),
            Schedule::InOrder => {
                let mut scratch = init();
                (0..n_blocks).for_each(|block| body(&mut scratch, block));
            }
            Schedule::Team(team) => team.for_each_block(n_blocks, |block| body(&mut init(), block)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disjoint::DisjointParts;

    /// Every helper visits the same chunks and blocks with the same indices in every
    /// schedule.
    #[test]
    fn every_schedule_visits_the_same_chunks() {
        let run = |schedule: Schedule| {
            let mut a: Vec<u64> = vec![0; 23];
            let mut b: Vec<u64> = vec![0; 46];
            schedule.for_each_chunk(&mut a, 4, |index, chunk| {
                chunk.iter_mut().for_each(|x| *x += index as u64 + 1)
            });
            schedule.for_each_chunk_pair(&mut a, 3, &mut b, 6, |index, a, b| {
                a[0] += 100 * index as u64;
                b[b.len() - 1] += a.len() as u64 + index as u64;
            });
            let input: Vec<u64> = (0..23).collect();
            let mut output = vec![0u64; 46];
            schedule.for_each_chunk_into(&input, 5, &mut output, 10, |input, output| {
                output[0] = input.iter().sum();
            });
            let squares = schedule.map_indices(9, |i| i * i);
            let mut blocks = vec![0u64; 17];
            let parts = DisjointParts::new(&mut blocks);
            schedule.for_each_block(
                17,
                || 3u64,
                |scratch, block| {
                    // SAFETY: one block, one element.
                    unsafe { parts.part(block..block + 1)[0] = *scratch + block as u64 };
                },
            );
            (a, b, output, squares, blocks)
        };
        let pooled = run(Schedule::Pool);
        let here = run(Schedule::InOrder);
        let team = Team::default();
        let with_team = run(Schedule::Team(&team));
        assert_eq!(pooled, here);
        assert_eq!(pooled, with_team);
        assert_eq!(pooled.0[0], 1);
        assert_eq!(pooled.0[3], 1 + 100);
        assert_eq!(pooled.1[5], 3);
        assert_eq!(pooled.2[10], 5 + 6 + 7 + 8 + 9);
        assert_eq!(pooled.3[8], 64);
        assert_eq!(pooled.4[16], 19);
    }
}
