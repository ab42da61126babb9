//! The threads of the native decoder's products: the calling thread plus `n - 1` workers that
//! spin between the products of a step and sleep between steps.
//!
//! Why not rayon's pool: a decode step is about 120 products of 0.05-3 ms each, separated by
//! microseconds of norms and attention. Handing each product to a pool whose threads are not
//! the caller costs a futex wake-up and a sleep per product (and a third thread on two cores):
//! measured on a 2-core AMD EPYC, SmolLM2's f32 step took 23-25 ms with rayon against ~12 ms of
//! products. Here the caller computes its own share, workers pick theirs up from a spinning
//! wait, and only a worker idle for [`SPIN`] goes to sleep (so it does not take a core from the
//! libtorch work that runs between steps: a draft, a sampler).
//!
//! The native models and drafts of a process share one pool per thread count
//! ([`Pool::shared`]): with a pool each, the base model's worker spun on for [`SPIN`] into every
//! draft step and the draft's worker into every verify call, three threads on two cores at each
//! hand-over. Measured on a 2-core Intel Xeon (chat24's first 8 prompts, 64 new tokens, three
//! alternating rounds): a 15-node tree with AMX tiles 9.7-10.1 ms per token against 10.1-10.7
//! with a pool each, a k = 3 chain in f32 15.3-16.7 against 15.9-16.9.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps.
const SPIN: Duration = Duration::from_micros(200);

type Job = *const (dyn Fn(usize) + Sync);

struct Shared {
    /// Bumped for every job; workers run a job when they see a new value.
    generation: AtomicUsize,
    /// Workers finished with the current job.
    done: AtomicUsize,
    /// The current job (valid while `generation` is ahead of a worker's last one and `done`
    /// has not reached the worker count).
    job: Mutex<Option<SendJob>>,
    sleeping: Mutex<usize>,
    wake: Condvar,
    stop: AtomicBool,
}

#[derive(Clone, Copy)]
struct SendJob(Job);
// SAFETY: the pointee is `Sync` and outlives every use (`Pool::run` waits for all workers).
unsafe impl Send for SendJob {}

/// A fixed set of threads that run one job at a time, each on its own share.
pub(crate) struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Held by the thread whose job the workers run: callers on several threads take turns.
    caller: Mutex<()>,
}

impl Pool {
    /// `threads` threads in all: the caller and `threads - 1` workers.
    pub(crate) fn new(threads: usize) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            job: Mutex::new(None),
            sleeping: Mutex::new(0),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let mut workers = Vec::new();
        for i in 1..threads.max(1) {
            let s = Arc::clone(&shared);
            workers.push(
                std::thread::Builder::new()
                    .name(format!("blockwise-native-{i}"))
                    .spawn(move || worker(&s, i))?,
            );
        }
        Ok(Pool {
            shared,
            workers,
            caller: Mutex::new(()),
        })
    }

    /// The process's pool of `threads` threads, started on first use and kept while anything
    /// holds it.
    pub(crate) fn shared(threads: usize) -> std::io::Result<Arc<Pool>> {
        static POOLS: Mutex<Vec<(usize, Weak<Pool>)>> = Mutex::new(Vec::new());
        let mut pools = POOLS.lock().unwrap_or_else(|e| e.into_inner());
        pools.retain(|(_, p)| p.strong_count() > 0);
        if let Some(pool) = pools
            .iter()
            .filter(|(n, _)| *n == threads)
            .find_map(|(_, p)| p.upgrade())
        {
            return Ok(pool);
        }
        let pool = Arc::new(Pool::new(threads)?);
        pools.push((threads, Arc::downgrade(&pool)));
        Ok(pool)
    }

    /// Threads in all (the caller included).
    pub(crate) fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f(0)` on the calling thread and `f(i)` on worker `i`, and returns when all have.
    /// Jobs must not call `run` on the pool that runs them.
    pub(crate) fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.workers.is_empty() {
            f(0);
            return;
        }
        let _turn = self.caller.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        // SAFETY of the lifetime extension: this function does not return before every worker
        // has finished with the job (`done` below), and a panic in `f(0)` aborts through the
        // guard rather than unwinding past the wait.
        let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f) };
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(SendJob(job));
        s.done.store(0, Ordering::Relaxed);
        s.generation.fetch_add(1, Ordering::Release);
        if *s.sleeping.lock().unwrap_or_else(|e| e.into_inner()) > 0 {
            s.wake.notify_all();
        }
        let guard = AbortOnUnwind;
        f(0);
        std::mem::forget(guard);
        while s.done.load(Ordering::Acquire) < self.workers.len() {
            std::hint::spin_loop();
        }
    }
}

/// Aborts if dropped during a panic: a job must not unwind while workers may still run it.
struct AbortOnUnwind;

impl Drop for AbortOnUnwind {
    fn drop(&mut self) {
        std::process::abort();
    }
}

fn worker(s: &Shared, index: usize) {
    let mut seen = 0;
    loop {
        let mut idle = Instant::now();
        let mut spins = 0u32;
        let generation = loop {
            if s.stop.load(Ordering::Acquire) {
                return;
            }
            let g = s.generation.load(Ordering::Acquire);
            if g != seen {
                break g;
            }
            std::hint::spin_loop();
            spins += 1;
            if spins.is_multiple_of(256) && idle.elapsed() > SPIN {
                let mut sleeping = s.sleeping.lock().unwrap_or_else(|e| e.into_inner());
                *sleeping += 1;
                while s.generation.load(Ordering::Acquire) == seen
                    && !s.stop.load(Ordering::Acquire)
                {
                    sleeping = s.wake.wait(sleeping).unwrap_or_else(|e| e.into_inner());
                }
                *sleeping -= 1;
                idle = Instant::now();
            }
        };
        seen = generation;
        let job = s
            .job
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .expect("a job was posted");
        let guard = AbortOnUnwind;
        // SAFETY: `Pool::run` keeps the job alive until `done` counts this worker.
        unsafe { (*job.0)(index) };
        std::mem::forget(guard);
        s.done.fetch_add(1, Ordering::Release);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        {
            let _sleeping = self
                .shared
                .sleeping
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_share_runs_once_per_job() {
        for threads in [1, 2, 3] {
            let pool = Pool::new(threads).unwrap();
            let counts: Vec<AtomicUsize> = (0..threads).map(|_| AtomicUsize::new(0)).collect();
            for round in 0..200 {
                if round == 100 {
                    std::thread::sleep(SPIN * 3); // let the workers fall asleep
                }
                pool.run(&|i| {
                    counts[i].fetch_add(1, Ordering::Relaxed);
                });
            }
            for c in &counts {
                assert_eq!(c.load(Ordering::Relaxed), 200);
            }
        }
    }

    #[test]
    fn callers_on_several_threads_share_one_pool() {
        let pool = Pool::shared(2).unwrap();
        assert!(Arc::ptr_eq(&pool, &Pool::shared(2).unwrap()));
        assert!(!Arc::ptr_eq(&pool, &Pool::shared(3).unwrap()));
        let counts: Vec<AtomicUsize> = (0..2).map(|_| AtomicUsize::new(0)).collect();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..500 {
                        pool.run(&|i| {
                            counts[i].fetch_add(1, Ordering::Relaxed);
                        });
                    }
                });
            }
        });
        for c in &counts {
            assert_eq!(c.load(Ordering::Relaxed), 2000);
        }
    }
}
