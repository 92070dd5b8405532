//! A pool of threads that are kept for a while after their job, so a
//! server taking many short connections (a published port in front of an
//! HTTP/1.0 server: a connection per request) does not pay for a new
//! thread, its stack and its setup for each one.
//!
//! A pool can give each of its threads a setup ([`Pool::with_setup`]) that
//! runs once, before the thread's first job: the supervisor enters a
//! container's network namespace there, once per thread instead of once
//! per connection. A thread whose setup fails ends without running
//! anything, so a job never runs on a thread that is not set up.
//!
//! Threads beyond the idle ones are made on demand, up to a limit; a
//! thread idle for longer than the pool's idle time ends, and after
//! [`Pool::close`] every idle thread ends and busy ones end after their
//! job. A job that panics ends; its thread and the pool's counts go on.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A job for the pool.
pub type Job = Box<dyn FnOnce() + Send + 'static>;

/// What a thread runs once before its first job; `false` ends it.
type Setup = Box<dyn Fn() -> bool + Send + Sync + 'static>;

struct State {
    queue: VecDeque<Job>,
    idle: usize,
    threads: usize,
    closed: bool,
}

struct Inner {
    name: String,
    stack: usize,
    max: usize,
    idle_for: Duration,
    setup: Option<Setup>,
    state: Mutex<State>,
    wake: Condvar,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A job never runs under the lock, so a poisoned lock can only come
        // from a bug in this file; its state is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Threads that run jobs; clones share the same threads.
#[derive(Clone)]
pub struct Pool(Arc<Inner>);

impl Pool {
    /// A pool of at most `max` threads named `name`, each with a stack of
    /// `stack` bytes, kept `idle_for` after their last job.
    pub fn new(name: &str, stack: usize, max: usize, idle_for: Duration) -> Self {
        Self::build(name, stack, max, idle_for, None)
    }

    /// [`Pool::new`], every thread running `setup` once before its first
    /// job.
    pub fn with_setup(
        name: &str,
        stack: usize,
        max: usize,
        idle_for: Duration,
        setup: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Self {
        Self::build(name, stack, max, idle_for, Some(Box::new(setup)))
    }

    fn build(
        name: &str,
        stack: usize,
        max: usize,
        idle_for: Duration,
        setup: Option<Setup>,
    ) -> Self {
        Self(Arc::new(Inner {
            name: name.to_string(),
            stack,
            max,
            idle_for,
            setup,
            state: Mutex::new(State {
                queue: VecDeque::new(),
                idle: 0,
                threads: 0,
                closed: false,
            }),
            wake: Condvar::new(),
        }))
    }

    /// Runs `job` on an idle thread, or on a new one; gives it back when
    /// the pool is closed, at its limit, or no thread can be made.
    pub fn run(&self, job: Job) -> Result<(), Job> {
        let mut st = self.0.lock();
        if st.closed {
            return Err(job);
        }
        if st.idle > st.queue.len() {
            st.queue.push_back(job);
            drop(st);
            self.0.wake.notify_one();
            return Ok(());
        }
        if st.threads >= self.0.max {
            return Err(job);
        }
        st.threads += 1;
        drop(st);
        // The job goes through a slot, so it can be given back if the
        // thread cannot be made.
        let slot = Arc::new(Mutex::new(Some(job)));
        let (inner, first) = (self.0.clone(), slot.clone());
        let made = std::thread::Builder::new()
            .name(self.0.name.clone())
            .stack_size(self.0.stack)
            .spawn(move || {
                let job = first.lock().ok().and_then(|mut j| j.take());
                worker(&inner, job);
            });
        if made.is_ok() {
            return Ok(());
        }
        self.0.lock().threads -= 1;
        let job = slot.lock().ok().and_then(|mut j| j.take());
        match job {
            Some(job) => Err(job),
            // Unreachable: only the thread that was not made takes it.
            None => Ok(()),
        }
    }

    /// Ends the idle threads now and the busy ones after their job; jobs
    /// not started yet are dropped, and no new job is taken.
    pub fn close(&self) {
        let queued: Vec<Job> = {
            let mut st = self.0.lock();
            st.closed = true;
            st.queue.drain(..).collect()
        };
        drop(queued);
        self.0.wake.notify_all();
    }

    /// Threads alive now, busy or idle.
    pub fn threads(&self) -> usize {
        self.0.lock().threads
    }
}

fn worker(inner: &Inner, first: Option<Job>) {
    if let Some(setup) = &inner.setup {
        if !setup() {
            drop(first);
            inner.lock().threads -= 1;
            return;
        }
    }
    let mut job = first;
    loop {
        if let Some(j) = job.take() {
            // A panic ends the job; the thread and the counts stay right.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(j));
        }
        let mut st = inner.lock();
        st.idle += 1;
        let until = Instant::now() + inner.idle_for;
        loop {
            if let Some(j) = st.queue.pop_front() {
                st.idle -= 1;
                job = Some(j);
                break;
            }
            let now = Instant::now();
            if st.closed || now >= until {
                st.idle -= 1;
                st.threads -= 1;
                return;
            }
            st = inner
                .wake
                .wait_timeout(st, until - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    fn wait_for(limit: Duration, f: impl Fn() -> bool) -> bool {
        let t0 = Instant::now();
        while !f() {
            if t0.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    #[test]
    fn threads_are_reused_and_end_when_idle() {
        let pool = Pool::new("t", 64 * 1024, 8, Duration::from_millis(300));
        let (tx, rx) = mpsc::channel();
        for _ in 0..50 {
            let tx = tx.clone();
            assert!(pool
                .run(Box::new(move || {
                    let _ = tx.send(std::thread::current().id());
                }))
                .is_ok());
            // One job at a time: the same idle thread takes the next.
            assert!(rx.recv_timeout(Duration::from_secs(5)).is_ok());
            assert!(wait_for(Duration::from_secs(5), || pool.0.lock().idle == 1));
        }
        assert_eq!(pool.threads(), 1);
        assert!(wait_for(Duration::from_secs(5), || pool.threads() == 0));
    }

    #[test]
    fn the_limit_gives_the_job_back() {
        let pool = Pool::new("t", 64 * 1024, 2, Duration::from_secs(5));
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let go = Arc::new(Mutex::new(go_rx));
        for _ in 0..2 {
            let go = go.clone();
            assert!(pool
                .run(Box::new(move || {
                    let _ = go.lock().map(|g| g.recv());
                }))
                .is_ok());
        }
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        let back = pool.run(Box::new(move || {
            r.fetch_add(1, Ordering::SeqCst);
        }));
        let Err(job) = back else {
            panic!("a third job ran in a pool of two busy threads")
        };
        job();
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        drop(go_tx);
        pool.close();
        assert!(wait_for(Duration::from_secs(5), || pool.threads() == 0));
        assert!(
            pool.run(Box::new(|| {})).is_err(),
            "a closed pool took a job"
        );
    }

    #[test]
    fn a_failed_setup_runs_nothing_and_a_panic_keeps_the_count() {
        let pool = Pool::with_setup("t", 64 * 1024, 4, Duration::from_secs(5), || false);
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        assert!(pool
            .run(Box::new(move || {
                r.fetch_add(1, Ordering::SeqCst);
            }))
            .is_ok());
        assert!(wait_for(Duration::from_secs(5), || pool.threads() == 0));
        assert_eq!(ran.load(Ordering::SeqCst), 0);

        let set_up = Arc::new(AtomicUsize::new(0));
        let s = set_up.clone();
        let pool = Pool::with_setup("t", 64 * 1024, 4, Duration::from_secs(5), move || {
            s.fetch_add(1, Ordering::SeqCst);
            true
        });
        assert!(pool.run(Box::new(|| panic!("a job's own panic"))).is_ok());
        assert!(wait_for(Duration::from_secs(5), || pool.0.lock().idle == 1));
        assert_eq!(pool.threads(), 1);
        let (tx, rx) = mpsc::channel();
        assert!(pool
            .run(Box::new(move || {
                let _ = tx.send(());
            }))
            .is_ok());
        assert!(rx.recv_timeout(Duration::from_secs(5)).is_ok());
        // One thread, set up once, ran both.
        assert_eq!(set_up.load(Ordering::SeqCst), 1);
        pool.close();
        assert!(wait_for(Duration::from_secs(5), || pool.threads() == 0));
    }
}
