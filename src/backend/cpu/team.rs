//! Two threads for one small molecule, without waking a sleeping thread for each parallel
//! step (a futex wake costs about as much as a molecule's dense product).
//!
//! The thread that calls the engine evaluates the molecule itself. For each call it hands
//! one job to the engine's one-thread pool: serve this call ([`Team::serve_call`]). The
//! pool's worker then spins, taking the jobs the evaluating thread posts through
//! [`Team::join`] and [`Team::for_each_block`], until the call ends. The evaluating thread never
//! waits for the server to start: blocks are claimed from a shared counter and a job not
//! yet picked up is taken back, so a late server costs no more than one thread. No thread
//! spins between calls.
//!
//! Which thread runs which block never changes the arithmetic, so results keep their bits.

use std::any::Any;
use std::cell::UnsafeCell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

/// Spins between two offers of the core to other threads (a few microseconds).
const YIELD_EVERY: u32 = 128;

/// A type-erased pointer to a job on the poster's stack, valid until `finished` reaches
/// `number` (or the poster takes the job back from the mailbox).
#[derive(Clone, Copy)]
struct JobRef {
    data: *const (),
    run: unsafe fn(*const ()),
    number: usize,
}

// SAFETY: the pointee is a `StackJob` whose closure is `Send`; the poster keeps it alive and
// untouched until the server reports it finished.
unsafe impl Send for JobRef {}

/// The mailbox between the thread evaluating a molecule and the thread serving it.
#[derive(Default)]
pub struct Team {
    /// Calls begun and calls ended ([`Team::begin_call`], [`Team::end_call`]).
    calls_begun: AtomicUsize,
    calls_ended: AtomicUsize,
    /// Jobs posted so far; the server runs the job in `job` when this moves past what it saw.
    posted: AtomicUsize,
    /// The number of the last job the server finished.
    finished: AtomicUsize,
    job: Mutex<Option<JobRef>>,
}

/// A closure waiting on the poster's stack, with room for the server's panic.
struct StackJob<F> {
    closure: UnsafeCell<Option<F>>,
    panic: UnsafeCell<Option<Box<dyn Any + Send>>>,
}

impl<F: FnOnce() + Send> StackJob<F> {
    /// # Safety
    /// `data` points at a live `StackJob<F>` that nobody else touches until this returns.
    unsafe fn run(data: *const ()) {
        // SAFETY: forwarded contract.
        let job = unsafe { &*(data as *const StackJob<F>) };
        // SAFETY: one thread runs the job (the server, or the poster after taking it
        // back), and it alone touches the job meanwhile.
        let closure = unsafe { (*job.closure.get()).take() };
        if let Some(closure) = closure
            && let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(closure))
        {
            // SAFETY: as above.
            unsafe { *job.panic.get() = Some(payload) };
        }
    }
}

impl Team {
    /// Runs `here` on this thread and `there` on the serving thread; returns when both are
    /// done. If the server has not picked `there` up by the time `here` is done (its core
    /// busy with something else), this thread takes it back and runs it, so a missing server
    /// costs no more than running both halves here. A panic in either is resumed here, after
    /// both have finished.
    pub fn join<A: FnOnce(), B: FnOnce() + Send>(&self, here: A, there: B) {
        let job = StackJob {
            closure: UnsafeCell::new(Some(there)),
            panic: UnsafeCell::new(None),
        };
        let number = {
            let mut slot = self.job.lock().unwrap_or_else(|e| e.into_inner());
            let number = self.posted.load(Ordering::Relaxed) + 1;
            *slot = Some(JobRef {
                data: &job as *const StackJob<B> as *const (),
                run: StackJob::<B>::run,
                number,
            });
            self.posted.store(number, Ordering::Release);
            number
        };
        // Whatever happens to `here`, the job must not leave this frame before the server
        // is done with it (or it is taken back).
        struct Settle<'a> {
            team: &'a Team,
            number: usize,
            /// Run a job taken back (false while unwinding: it is dropped instead).
            run_taken_back: bool,
        }
        impl Drop for Settle<'_> {
            fn drop(&mut self) {
                let taken_back = self
                    .team
                    .job
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                if let Some(job) = taken_back {
                    if self.run_taken_back {
                        // SAFETY: the job is alive (this frame) and no longer in the mailbox.
                        unsafe { (job.run)(job.data) };
                    }
                    return;
                }
                let mut spins = 0u32;
                while self.team.finished.load(Ordering::Acquire) < self.number {
                    spins = spins.wrapping_add(1);
                    if spins.is_multiple_of(YIELD_EVERY) {
                        thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                }
            }
        }
        let mut settle = Settle {
            team: self,
            number,
            run_taken_back: false,
        };
        here();
        settle.run_taken_back = true;
        drop(settle);
        // SAFETY: the job has finished, here or on the server.
        if let Some(payload) = unsafe { (*job.panic.get()).take() } {
            std::panic::resume_unwind(payload);
        }
    }
}

impl Team {
    /// Numbers a new call, for [`Team::serve_call`] and [`Team::end_call`].
    pub fn begin_call(&self) -> usize {
        self.calls_begun.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Marks `call` (and every call before it) ended: its server returns.
    pub fn end_call(&self, call: usize) {
        self.calls_ended.fetch_max(call, Ordering::Release);
    }

    /// Serves until `call` has ended. A server that starts after its call has ended returns
    /// at once; one still running when the next call posts may take that call's jobs, which
    /// is as good as the next call's own server taking them.
    pub fn serve_call(&self, call: usize) {
        self.serve(|| self.calls_ended.load(Ordering::Acquire) >= call);
    }

    /// Runs the jobs posted to this team until `stop()` (the evaluating thread has finished;
    /// no job is in flight then).
    pub fn serve(&self, stop: impl Fn() -> bool) {
        // Look in the mailbox once at the start: a job may wait there already.
        let mut seen = usize::MAX;
        let mut spins = 0u32;
        while !stop() {
            let posted = self.posted.load(Ordering::Acquire);
            if posted == seen {
                spins = spins.wrapping_add(1);
                if spins.is_multiple_of(YIELD_EVERY) {
                    // Give the core away if anything else wants it (an oversubscribed
                    // machine): the evaluating thread claims the blocks this one does not.
                    thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
                continue;
            }
            seen = posted;
            let job = self.job.lock().unwrap_or_else(|e| e.into_inner()).take();
            // None: the poster took the job back and ran it itself.
            if let Some(job) = job {
                // SAFETY: the poster keeps the job alive until `finished` reaches its number.
                unsafe { (job.run)(job.data) };
                self.finished.store(job.number, Ordering::Release);
            }
        }
    }
}

impl Team {
    /// Runs `body(block)` for every block in `0..n_blocks` on both of the team's threads:
    /// each thread claims the next unclaimed block until none is left, so a server that
    /// starts late or is interrupted leaves its share to this thread (which then waits at
    /// most for the one block the server holds).
    pub fn for_each_block(&self, n_blocks: usize, body: impl Fn(usize) + Sync) {
        if n_blocks < 2 {
            (0..n_blocks).for_each(body);
            return;
        }
        let next = AtomicUsize::new(0);
        let claim_and_run = || {
            loop {
                let block = next.fetch_add(1, Ordering::Relaxed);
                if block >= n_blocks {
                    break;
                }
                body(block);
            }
        };
        self.join(claim_and_run, claim_and_run);
    }
}

/// Chooses between one thread and two for the calls on one molecule, from their measured
/// times: a second thread helps when the two run on two physical cores, and hurts when the
/// system puts them on one (hyperthreads of one core on a virtual machine's host, or a core
/// busy with another process), which can change while a simulation runs. Every
/// [`PROBE_EVERY`]th call tries the mode not in use; both keep a moving average. Results do
/// not depend on the choice (the same bits either way), only the time does.
#[derive(Clone, Debug, Default)]
pub struct ModeChoice {
    /// Moving averages of seconds per call: one thread, two threads (0: not yet measured).
    average_seconds: [f64; 2],
    calls: u64,
    n_atoms: usize,
}

/// One call in this many runs in the mode not currently preferred.
const PROBE_EVERY: u64 = 16;

impl ModeChoice {
    /// Whether the next call on `n_atoms` atoms should use two threads.
    pub fn two_threads(&mut self, n_atoms: usize) -> bool {
        if n_atoms != self.n_atoms {
            *self = ModeChoice {
                n_atoms,
                ..ModeChoice::default()
            };
        }
        self.calls += 1;
        let [one, two] = self.average_seconds;
        // Measure each mode first, then the faster, probing the other now and then.
        let preferred_two = if one == 0.0 {
            false
        } else if two == 0.0 {
            true
        } else {
            two < one
        };
        if self.calls.is_multiple_of(PROBE_EVERY) {
            !preferred_two
        } else {
            preferred_two
        }
    }

    /// Records the time of a call made in the mode `two_threads` chose. A call slower than
    /// twice the average counts as twice the average: one interrupted call (another
    /// program's threads, a page fault) should not flip the choice, a lasting change still
    /// does within a few calls.
    pub fn record(&mut self, two_threads: bool, seconds: f64) {
        let average = &mut self.average_seconds[usize::from(two_threads)];
        *average = if *average == 0.0 {
            seconds
        } else {
            0.75 * *average + 0.25 * seconds.min(2.0 * *average)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disjoint::DisjointParts;
    use std::sync::atomic::AtomicBool;

    /// Runs `body` with a team served by a second thread.
    fn with_server(body: impl FnOnce(&Team) + Send) {
        let team = Team::default();
        let done = AtomicBool::new(false);
        thread::scope(|scope| {
            scope.spawn(|| team.serve(|| done.load(Ordering::Acquire)));
            body(&team);
            done.store(true, Ordering::Release);
        });
    }

    #[test]
    fn join_runs_both_halves_and_waits_for_them() {
        with_server(|team| {
            for round in 0..1000u64 {
                let (mut left, mut right) = (0u64, 0u64);
                team.join(|| left = round * 2, || right = round * 3 + 1);
                assert_eq!((left, right), (round * 2, round * 3 + 1));
            }
        });
    }

    /// The engine's pattern: one server job per call, started whenever the pool gets to it,
    /// returning when its call ends, also when it starts after that.
    #[test]
    fn a_call_server_returns_when_its_call_ends() {
        let team = std::sync::Arc::new(Team::default());
        for round in 0..200usize {
            let call = team.begin_call();
            let server = std::sync::Arc::clone(&team);
            let late = round % 3 == 0;
            let handle = (!late).then(|| thread::spawn(move || server.serve_call(call)));
            let sum = AtomicUsize::new(0);
            team.for_each_block(10, |block| {
                sum.fetch_add(block + round, Ordering::Relaxed);
            });
            team.end_call(call);
            assert_eq!(sum.into_inner(), 45 + 10 * round);
            match handle {
                Some(handle) => handle.join().unwrap(),
                // Started after its call ended: returns at once.
                None => team.serve_call(call),
            }
        }
    }

    #[test]
    fn a_join_without_a_server_runs_both_halves_here() {
        let team = Team::default();
        let (mut left, mut right) = (0, 0);
        team.join(|| left = 1, || right = 2);
        assert_eq!((left, right), (1, 2));
    }

    #[test]
    fn a_panic_on_the_server_reaches_the_poster_and_the_team_goes_on() {
        with_server(|team| {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                team.join(|| {}, || panic!("the served half failed"))
            }));
            assert!(outcome.is_err());
            let mut value = 0;
            team.join(|| {}, || value = 7);
            assert_eq!(value, 7);
        });
    }

    #[test]
    fn every_block_runs_once_on_either_thread() {
        with_server(|team| {
            for n_blocks in [0usize, 1, 2, 7, 100] {
                let mut counts = vec![0u32; n_blocks];
                let parts = DisjointParts::new(&mut counts);
                team.for_each_block(n_blocks, |block| {
                    // SAFETY: one block, one element.
                    unsafe { parts.part(block..block + 1)[0] += 1 };
                });
                assert!(counts.iter().all(|&c| c == 1), "{n_blocks}: {counts:?}");
            }
        });
    }

    #[test]
    fn the_faster_mode_is_chosen_and_the_other_probed() {
        let mut choice = ModeChoice::default();
        let mut runs = [0u32; 2];
        // Two threads take 2 units, one takes 3, then the machine changes and two take 5.
        for call in 0..400 {
            let two = choice.two_threads(12);
            runs[usize::from(two)] += 1;
            let seconds = match (two, call < 200) {
                (true, true) => 2.0,
                (true, false) => 5.0,
                (false, _) => 3.0,
            };
            choice.record(two, seconds);
            if call == 199 {
                assert!(runs[1] > 160 && runs[0] < 40, "{runs:?}");
                runs = [0; 2];
            }
        }
        assert!(runs[0] > 160 && runs[1] < 40, "{runs:?}");
        // One interrupted call does not flip the choice back.
        let mut choice = ModeChoice::default();
        for call in 0..64 {
            let two = choice.two_threads(12);
            let seconds = if two { 2.0 } else { 3.0 };
            choice.record(two, if call == 40 { 100.0 } else { seconds });
        }
        assert!(choice.two_threads(12));
        // Another molecule starts over.
        assert!(!choice.two_threads(20));
    }
}
