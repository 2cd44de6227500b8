//! Circuit breaker per agent type: after `threshold` consecutive dispatch or start failures it
//! opens and no task of that type is dispatched until `cooldown` has passed; then one probe is
//! let through (half-open) and its outcome closes or re-opens the circuit. Pure state machine.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open {
        until: Instant,
    },
    /// One probe dispatch is allowed; its outcome decides.
    HalfOpen {
        probing: bool,
    },
}

#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    consecutive_failures: u32,
    state: CircuitState,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            cooldown,
            consecutive_failures: 0,
            state: CircuitState::Closed,
        }
    }

    pub fn state(&self) -> CircuitState {
        self.state
    }

    pub fn is_open(&self) -> bool {
        !matches!(self.state, CircuitState::Closed)
    }

    /// How many dispatches may go out now (`wanted` when closed, 0 or 1 otherwise).
    pub fn admit(&mut self, wanted: usize, now: Instant) -> usize {
        match self.state {
            CircuitState::Closed => wanted,
            CircuitState::Open { until } if now >= until => {
                self.state = CircuitState::HalfOpen {
                    probing: wanted > 0,
                };
                wanted.min(1)
            }
            CircuitState::Open { .. } => 0,
            CircuitState::HalfOpen { probing: false } if wanted > 0 => {
                self.state = CircuitState::HalfOpen { probing: true };
                1
            }
            CircuitState::HalfOpen { .. } => 0,
        }
    }

    /// When an open circuit will let a probe through.
    pub fn reopens_at(&self) -> Option<Instant> {
        match self.state {
            CircuitState::Open { until } => Some(until),
            _ => None,
        }
    }

    pub fn record_success(&mut self) {
        self.consecutive_failures = 0;
        self.state = CircuitState::Closed;
    }

    pub fn record_failure(&mut self, now: Instant) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let probe_failed = matches!(self.state, CircuitState::HalfOpen { .. });
        if probe_failed || self.consecutive_failures >= self.threshold {
            self.state = CircuitState::Open {
                until: now + self.cooldown,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_probes_after_cooldown() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, Duration::from_secs(10));
        assert_eq!(b.admit(5, t0), 5);
        b.record_failure(t0);
        b.record_failure(t0);
        assert!(!b.is_open());
        b.record_failure(t0);
        assert!(b.is_open());
        assert_eq!(b.admit(5, t0 + Duration::from_secs(9)), 0);
        assert_eq!(b.admit(5, t0 + Duration::from_secs(10)), 1, "one probe");
        assert_eq!(
            b.admit(5, t0 + Duration::from_secs(10)),
            0,
            "only one probe at a time"
        );
        b.record_success();
        assert_eq!(b.admit(5, t0 + Duration::from_secs(11)), 5);
    }

    #[test]
    fn a_failed_probe_reopens_at_once() {
        let t0 = Instant::now();
        let mut b = Breaker::new(2, Duration::from_secs(1));
        b.record_failure(t0);
        b.record_failure(t0);
        assert_eq!(b.admit(1, t0 + Duration::from_secs(1)), 1);
        b.record_failure(t0 + Duration::from_secs(1));
        assert_eq!(b.reopens_at(), Some(t0 + Duration::from_secs(2)));
    }

    #[test]
    fn successes_reset_the_count() {
        let t0 = Instant::now();
        let mut b = Breaker::new(2, Duration::from_secs(1));
        b.record_failure(t0);
        b.record_success();
        b.record_failure(t0);
        assert!(!b.is_open());
    }
}
