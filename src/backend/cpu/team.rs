//! A second thread for small molecules: it spins while a call is under way, so the dense
//! products of a molecule (a few microseconds each) can split between two cores without
//! waking a sleeping thread for each of them (a futex wake costs about as much as the work).
//!
//! The engine hands it one closure at a time through [`Team::join`], which runs two closures
//! (one here, one there) and returns when both are done, like `rayon::join`. Which thread
//! runs which half never changes the arithmetic, so results keep their bits. After a call the
//! helper keeps spinning for [`SPIN_WINDOW`] (MD steps follow each other closely, as OpenMP
//! runtimes do), then parks until the next call wakes it.

use std::any::Any;
use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long the helper spins for new work after its last job before it parks.
const SPIN_WINDOW: Duration = Duration::from_millis(2);

/// Spins between two offers of the core to other threads (a few microseconds).
const YIELD_EVERY: u32 = 128;

/// A type-erased pointer to a job on the caller's stack, valid until `finished` reaches
/// `number` (or the caller takes the job back from the mailbox).
#[derive(Clone, Copy)]
struct JobRef {
    data: *const (),
    run: unsafe fn(*const ()),
    number: usize,
}

// SAFETY: the pointee is a `StackJob` whose closure is `Send`; the caller keeps it alive and
// untouched until the helper reports it finished.
unsafe impl Send for JobRef {}

struct Shared {
    /// Jobs posted so far; the helper runs the job in `job` when this moves past what it saw.
    posted: AtomicUsize,
    /// Jobs the helper has finished.
    finished: AtomicUsize,
    job: Mutex<Option<JobRef>>,
    stop: AtomicBool,
}

/// The caller's side: one helper thread and the mailbox to it.
pub struct Team {
    shared: Arc<Shared>,
    helper: Option<JoinHandle<()>>,
}

/// A closure waiting on the caller's stack, with room for the helper's panic.
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
        // SAFETY: the helper alone touches the job while it runs.
        let closure = unsafe { (*job.closure.get()).take() };
        if let Some(closure) = closure {
            if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(closure)) {
                // SAFETY: as above.
                unsafe { *job.panic.get() = Some(payload) };
            }
        }
    }
}

impl Team {
    /// Starts the helper thread, or returns `None` when the system will not start one.
    pub fn start() -> Option<Team> {
        let shared = Arc::new(Shared {
            posted: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            job: Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        let helper_shared = Arc::clone(&shared);
        let helper = thread::Builder::new()
            .name("painn-pair".into())
            .spawn(move || helper_loop(&helper_shared))
            .ok()?;
        Some(Team {
            shared,
            helper: Some(helper),
        })
    }

    /// Tells a parked helper that work is coming (a call is starting), so that it is
    /// spinning by the time the first job arrives.
    pub fn wake(&self) {
        if let Some(helper) = &self.helper {
            helper.thread().unpark();
        }
    }

    /// Runs `here` on this thread and `there` on the helper; returns when both are done.
    /// If the helper has not picked `there` up by the time `here` is done (its core busy with
    /// something else), this thread takes it back and runs it, so a missing helper costs no
    /// more than running both halves here. A panic in either is resumed here, after both
    /// have finished.
    pub fn join<A: FnOnce(), B: FnOnce() + Send>(&self, here: A, there: B) {
        let job = StackJob {
            closure: UnsafeCell::new(Some(there)),
            panic: UnsafeCell::new(None),
        };
        let number = {
            let mut slot = self.shared.job.lock().unwrap_or_else(|e| e.into_inner());
            let number = self.shared.posted.load(Ordering::Relaxed) + 1;
            *slot = Some(JobRef {
                data: &job as *const StackJob<B> as *const (),
                run: StackJob::<B>::run,
                number,
            });
            self.shared.posted.store(number, Ordering::Release);
            number
        };
        self.wake();
        // Whatever happens to `here`, the job must not leave this frame before the helper
        // is done with it (or it is taken back).
        struct Settle<'a> {
            shared: &'a Shared,
            number: usize,
            /// Run a job taken back (false while unwinding: it is dropped instead).
            run_taken_back: bool,
        }
        impl Drop for Settle<'_> {
            fn drop(&mut self) {
                let taken_back = self
                    .shared
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
                while self.shared.finished.load(Ordering::Acquire) < self.number {
                    spins = spins.wrapping_add(1);
                    if spins % YIELD_EVERY == 0 {
                        thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                }
            }
        }
        let mut settle = Settle {
            shared: &self.shared,
            number,
            run_taken_back: false,
        };
        here();
        settle.run_taken_back = true;
        drop(settle);
        // SAFETY: the job has finished, here or on the helper.
        if let Some(payload) = unsafe { (*job.panic.get()).take() } {
            std::panic::resume_unwind(payload);
        }
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(helper) = self.helper.take() {
            helper.thread().unpark();
            let _ = helper.join();
        }
    }
}

fn helper_loop(shared: &Shared) {
    let mut seen = 0usize;
    let mut last_work = Instant::now();
    let mut spins = 0u32;
    loop {
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        let posted = shared.posted.load(Ordering::Acquire);
        if posted == seen {
            spins = spins.wrapping_add(1);
            if spins % YIELD_EVERY != 0 {
                std::hint::spin_loop();
            } else if last_work.elapsed() > SPIN_WINDOW {
                // A later `wake` or `join` unparks; a stale token only costs one more lap.
                thread::park();
                last_work = Instant::now();
            } else {
                // Give the core away if anything else wants it (an oversubscribed machine):
                // the caller claims the blocks this thread does not.
                thread::yield_now();
            }
            continue;
        }
        seen = posted;
        let job = shared.job.lock().unwrap_or_else(|e| e.into_inner()).take();
        // None: the caller took the job back and ran it itself.
        if let Some(job) = job {
            // SAFETY: the caller keeps the job alive until `finished` reaches its number.
            unsafe { (job.run)(job.data) };
            shared.finished.store(job.number, Ordering::Release);
        }
        last_work = Instant::now();
    }
}

thread_local! {
    /// The team of the molecule being evaluated on this thread, if any.
    static CURRENT: Cell<*const Team> = const { Cell::new(std::ptr::null()) };
}

/// Runs `body` with `team` as this thread's current team (for [`join`]).
pub fn with_team<R>(team: &Team, body: impl FnOnce() -> R) -> R {
    struct Restore(*const Team);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.with(|current| current.set(self.0));
        }
    }
    let _restore = Restore(CURRENT.with(|current| current.replace(team)));
    body()
}

/// Runs `here` and `there` on the current team's two threads when there is a team, else one
/// after the other on this thread.
pub fn join<A: FnOnce(), B: FnOnce() + Send>(here: A, there: B) {
    let team = CURRENT.with(|current| current.get());
    if team.is_null() {
        here();
        there();
    } else {
        // SAFETY: `with_team` keeps the team borrowed while the pointer is set.
        unsafe { &*team }.join(here, there);
    }
}

/// Runs `body(block)` for every block in `0..n_blocks`, on both threads of the current team
/// when there is one: each thread claims the next unclaimed block until none is left, so a
/// helper that starts late or is interrupted leaves its share to this thread (which then
/// waits at most for the one block the helper holds). Without a team, in order here.
pub fn for_each_block(n_blocks: usize, body: impl Fn(usize) + Sync) {
    if !active() || n_blocks < 2 {
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
    join(claim_and_run, claim_and_run);
}

/// A mutable slice shared by the threads of [`for_each_block`], each block taking its own
/// disjoint part.
pub struct SharedSlice<'a, T> {
    pointer: *mut T,
    len: usize,
    _borrow: std::marker::PhantomData<&'a mut [T]>,
}

// SAFETY: the parts handed out are disjoint (`part`'s contract), like `split_at_mut`.
unsafe impl<T: Send> Send for SharedSlice<'_, T> {}
unsafe impl<T: Send> Sync for SharedSlice<'_, T> {}

impl<'a, T> SharedSlice<'a, T> {
    pub fn new(values: &'a mut [T]) -> Self {
        SharedSlice {
            pointer: values.as_mut_ptr(),
            len: values.len(),
            _borrow: std::marker::PhantomData,
        }
    }

    /// The values in `range`.
    ///
    /// # Safety
    /// No other part alive at the same time may overlap `range`.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn part(&self, range: std::ops::Range<usize>) -> &mut [T] {
        assert!(range.start <= range.end && range.end <= self.len);
        // SAFETY: in bounds (checked); disjoint from other live parts (the caller's
        // contract).
        unsafe { std::slice::from_raw_parts_mut(self.pointer.add(range.start), range.len()) }
    }
}

/// Whether this thread has a team (two threads for the next [`join`]).
pub fn active() -> bool {
    CURRENT.with(|current| !current.get().is_null())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_runs_both_halves_and_waits_for_them() {
        let team = Team::start().expect("a helper thread");
        for round in 0..1000u64 {
            let (mut left, mut right) = (0u64, 0u64);
            team.join(|| left = round * 2, || right = round * 3 + 1);
            assert_eq!((left, right), (round * 2, round * 3 + 1));
        }
    }

    #[test]
    fn a_panic_on_the_helper_reaches_the_caller_and_the_team_goes_on() {
        let team = Team::start().expect("a helper thread");
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            team.join(|| {}, || panic!("helper half failed"))
        }));
        assert!(outcome.is_err());
        let mut value = 0;
        team.join(|| {}, || value = 7);
        assert_eq!(value, 7);
    }

    #[test]
    fn every_block_runs_once_on_either_thread() {
        let team = Team::start().expect("a helper thread");
        with_team(&team, || {
            for n_blocks in [0usize, 1, 2, 7, 100] {
                let mut counts = vec![0u32; n_blocks];
                let shared = SharedSlice::new(&mut counts);
                for_each_block(n_blocks, |block| {
                    // SAFETY: one block, one element.
                    unsafe { shared.part(block..block + 1)[0] += 1 };
                });
                assert!(counts.iter().all(|&c| c == 1), "{n_blocks}: {counts:?}");
            }
        });
    }

    #[test]
    fn join_without_a_team_runs_both_in_order_here() {
        assert!(!active());
        let mut order = Vec::new();
        let log = std::sync::Mutex::new(&mut order);
        join(
            || log.lock().unwrap().push(1),
            || log.lock().unwrap().push(2),
        );
        assert_eq!(order, [1, 2]);
    }
}
