//! The time calls are measured and stamped by (durations, `endTime`, the live calls' stats).
//! It is the system's clock moved forward by an offset that starts at zero and that only
//! [`Clock::advance`] changes, so a test lets a call last a minute without waiting for it.
//! Timers (ring timeout, reconnect grace) run on the runtime's own time and are not moved.

use chrono::{DateTime, Utc};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Wall and monotonic time with a shared offset (clones move together).
#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset_ms: Arc<AtomicU64>,
}

impl Clock {
    fn offset(&self) -> Duration {
        Duration::from_millis(self.offset_ms.load(Ordering::Relaxed))
    }

    /// The wall-clock time.
    pub(crate) fn now(&self) -> DateTime<Utc> {
        let now = Utc::now();
        chrono::TimeDelta::from_std(self.offset())
            .ok()
            .and_then(|offset| now.checked_add_signed(offset))
            .unwrap_or(now)
    }

    /// The monotonic time.
    pub(crate) fn instant(&self) -> Instant {
        let now = Instant::now();
        now.checked_add(self.offset()).unwrap_or(now)
    }

    /// Moves this clock (and its clones) forward by `by`, as if that much time had passed.
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.offset_ms.fetch_add(ms, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::Clock;
    use std::time::Duration;

    #[test]
    fn advancing_moves_both_times_and_every_clone_forward() {
        let clock = Clock::default();
        let copy = clock.clone();
        let (wall, mono) = (clock.now(), clock.instant());
        copy.advance(Duration::from_secs(90));
        let moved = (clock.now() - wall).num_seconds();
        assert!((90..92).contains(&moved), "{moved}");
        let moved = clock.instant().duration_since(mono).as_secs();
        assert!((90..92).contains(&moved), "{moved}");
    }
}
