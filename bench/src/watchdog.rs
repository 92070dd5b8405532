//! A timer thread that kills a run at its timeout unless the run finished
//! first: shared by the timed runs ([`crate::sample`]) and the traced ones
//! ([`crate::peak_rss`]), each of which brings its own way to kill safely.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// A running watchdog.
pub struct Watchdog {
    done: Arc<AtomicBool>,
    thread: JoinHandle<bool>,
}

impl Watchdog {
    /// Calls `kill` once `timeout` has passed, unless [`Watchdog::finish`]
    /// came first. Checks every 5 ms.
    pub fn start(timeout: Duration, kill: impl FnOnce() + Send + 'static) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let thread = std::thread::spawn(move || {
            let step = Duration::from_millis(5);
            let mut waited = Duration::ZERO;
            while waited < timeout {
                if flag.load(Ordering::Acquire) {
                    return false;
                }
                std::thread::sleep(step);
                waited += step;
            }
            if flag.load(Ordering::Acquire) {
                return false;
            }
            kill();
            true
        });
        Self { done, thread }
    }

    /// Stops the watchdog; true if it had killed the run.
    pub fn finish(self) -> bool {
        self.done.store(true, Ordering::Release);
        self.thread.join().unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn kills_only_after_the_timeout_and_only_if_not_finished() {
        let kills = Arc::new(AtomicUsize::new(0));
        let k = kills.clone();
        let w = Watchdog::start(Duration::from_secs(30), move || {
            k.fetch_add(1, Ordering::SeqCst);
        });
        assert!(!w.finish());
        let k = kills.clone();
        let w = Watchdog::start(Duration::from_millis(20), move || {
            k.fetch_add(1, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(w.finish());
        assert_eq!(kills.load(Ordering::SeqCst), 1);
    }
}
