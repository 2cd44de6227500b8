//! How often the sweep re-sends a task that stays queued in the store.
//!
//! The sweep exists for a task the store holds as queued with no message behind it (the process
//! stopped between the create and the send; a message redriven to the dead-letter queue). It
//! cannot tell that case from a task that simply waits in a long backlog, and on SQS every
//! re-send is one more message: re-sending the whole backlog on every sweep multiplied the
//! messages, and with them the depth that drives dispatch. So a task is re-sent the first time
//! a sweep finds it (the repair is as quick as before), then at doubling intervals up to
//! [`MAX_INTERVAL`].

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::task::TaskId;

/// Longest wait between two re-sends of the same task.
pub const MAX_INTERVAL: Duration = Duration::from_secs(16 * 60);

/// Per task: how many times the sweep re-sent it and when it last did.
#[derive(Debug)]
pub struct ResendBackoff {
    first: Duration,
    sent: HashMap<TaskId, (u32, Instant)>,
}

impl ResendBackoff {
    /// `first`: the wait after the first re-send (then doubled each time).
    pub fn new(first: Duration) -> ResendBackoff {
        ResendBackoff {
            first,
            sent: HashMap::new(),
        }
    }

    /// Of the stale tasks one sweep found, those to re-send now (recorded as sent). Tasks not in
    /// `stale` any more (claimed, finished, or past the sweep's limit) are forgotten.
    pub fn due(&mut self, stale: &[TaskId], now: Instant) -> Vec<TaskId> {
        let still: HashSet<&TaskId> = stale.iter().collect();
        self.sent.retain(|id, _| still.contains(id));
        let mut out = Vec::new();
        for id in stale {
            let send = match self.sent.get(id) {
                None => true,
                Some(&(count, at)) => now.saturating_duration_since(at) >= self.wait_after(count),
            };
            if send {
                let entry = self.sent.entry(id.clone()).or_insert((0, now));
                *entry = (entry.0.saturating_add(1), now);
                out.push(id.clone());
            }
        }
        out
    }

    /// The wait after the `count`-th re-send: `first`, doubled per earlier re-send.
    fn wait_after(&self, count: u32) -> Duration {
        let doublings = count.saturating_sub(1).min(16);
        self.first.saturating_mul(1 << doublings).min(MAX_INTERVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<TaskId> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_waiting_task_is_resent_at_once_then_at_doubling_intervals() {
        let mut b = ResendBackoff::new(Duration::from_secs(30));
        let t0 = Instant::now();
        let stale = ids(&["a"]);
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Sweeps every 30 s for an hour: re-sent at 0, 30, 90, 210, 450, 930 s, then every 16 min.
        let sent: Vec<u64> = (0..=120)
            .map(|i| i * 30)
            .filter(|&s| !b.due(&stale, at(s)).is_empty())
            .collect();
        assert_eq!(sent, vec![0, 30, 90, 210, 450, 930, 1890, 2850]);
    }

    #[test]
    fn a_task_no_longer_stale_is_forgotten_and_new_ones_go_at_once() {
        let mut b = ResendBackoff::new(Duration::from_secs(30));
        let t0 = Instant::now();
        assert_eq!(b.due(&ids(&["a", "b"]), t0), ids(&["a", "b"]));
        // `a` was claimed; `c` is new: only `c` now.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.due(&ids(&["b", "c"]), t1), ids(&["c"]));
        // `a` stale again later (requeued after a failed attempt): a first re-send again.
        assert_eq!(b.due(&ids(&["a"]), t1), ids(&["a"]));
        assert_eq!(b.sent.len(), 1);
    }
}
