//! Exponential backoff for restarting children and retrying reports and installs.

use std::time::Duration;

/// Doubles from `initial` up to `max`; a child that ran at least `stable` before it
/// died starts again from `initial` (a crash a day is not a crash loop).
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    stable: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration, stable: Duration) -> Self {
        Self {
            initial,
            max,
            stable,
            next: initial,
        }
    }

    /// The delay before the next attempt, given how long the last attempt lasted.
    pub fn next_delay(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= self.stable {
            self.next = self.initial;
        }
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// After a success (a report accepted, an install done).
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_resets_after_a_stable_run() {
        let s = Duration::from_secs;
        let mut b = Backoff::new(Duration::from_millis(500), s(8), s(60));
        let quick = s(1);
        let got: Vec<u128> = (0..7).map(|_| b.next_delay(quick).as_millis()).collect();
        assert_eq!(got, [500, 1000, 2000, 4000, 8000, 8000, 8000]);
        assert_eq!(b.next_delay(s(61)).as_millis(), 500, "stable run resets");
        assert_eq!(b.next_delay(quick).as_millis(), 1000);
        b.reset();
        assert_eq!(b.next_delay(quick).as_millis(), 500);
    }
}
