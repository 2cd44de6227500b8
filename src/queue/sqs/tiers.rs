//! One agent type's SQS queues: the base queue and its priority tiers. Which queue a task of a
//! given priority goes to, the order a receive takes them in, and the receipts that say which
//! queue a message came from. Pure: no I/O.

use crate::aws::TierQueue;

/// Separates a tier's name from the SQS receipt handle in a tagged receipt (`<tier>~<handle>`).
/// SQS receipt handles are base64-like (`[A-Za-z0-9+/=]`) and tier names `[a-z0-9_-]`, so
/// neither ever contains it.
const TAG_SEPARATOR: char = '~';

/// One agent type's queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TypeQueues {
    /// `<cluster_name>-<type>-tasks`: the tasks below every tier's minimum (all of them when
    /// the type has no tiers).
    base: String,
    /// Highest minimum first.
    tiers: Vec<TierQueue>,
}

/// One queue of a type: its name, and the tier its receipts are tagged with (`None` for the
/// base queue, whose receipts are SQS's handles as they are).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct QueueRef<'a> {
    pub name: &'a str,
    pub tier: Option<&'a str>,
}

impl TypeQueues {
    pub fn new(base: String, mut tiers: Vec<TierQueue>) -> TypeQueues {
        // Routing and receiving both rely on this order; do not trust the caller for it.
        tiers.sort_by_key(|t| std::cmp::Reverse(t.min_priority));
        TypeQueues { base, tiers }
    }

    fn base_ref(&self) -> QueueRef<'_> {
        QueueRef {
            name: &self.base,
            tier: None,
        }
    }

    fn tier_ref(tier: &TierQueue) -> QueueRef<'_> {
        QueueRef {
            name: &tier.queue,
            tier: Some(&tier.tier),
        }
    }

    /// The queue a task of `priority` goes to: the tier with the highest minimum at or below
    /// it, else the base queue.
    pub fn route(&self, priority: i64) -> QueueRef<'_> {
        self.tiers
            .iter()
            .find(|t| t.min_priority <= priority)
            .map_or_else(|| self.base_ref(), Self::tier_ref)
    }

    /// The order a receive takes the queues in: tiers highest first, the base queue last.
    pub fn receive_order(&self) -> Vec<QueueRef<'_>> {
        self.tiers
            .iter()
            .map(Self::tier_ref)
            .chain([self.base_ref()])
            .collect()
    }

    /// The queue a receipt from [`tag_receipt`] belongs to, and the SQS handle in it. A tag
    /// naming no tier of this type (say, one removed from the inputs since) means the base
    /// queue: the handle is then unknown there, which ack and nack treat as already done.
    pub fn for_receipt<'r>(&self, receipt: &'r str) -> (QueueRef<'_>, &'r str) {
        let Some((tag, handle)) = receipt.split_once(TAG_SEPARATOR) else {
            return (self.base_ref(), receipt);
        };
        let queue = self
            .tiers
            .iter()
            .find(|t| t.tier == tag)
            .map_or_else(|| self.base_ref(), Self::tier_ref);
        (queue, handle)
    }
}

/// The receipt a message from `queue` is handed out with: the base queue's untagged, so a type
/// without tiers sees SQS's handles exactly as before.
pub(super) fn tag_receipt(queue: QueueRef<'_>, handle: &str) -> String {
    match queue.tier {
        None => handle.to_owned(),
        Some(tier) => format!("{tier}{TAG_SEPARATOR}{handle}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queues(tiers: &[(&str, i64)]) -> TypeQueues {
        let tiers = tiers
            .iter()
            .map(|&(tier, min_priority)| TierQueue {
                tier: tier.into(),
                min_priority,
                queue: format!("c-t-tasks-{tier}"),
            })
            .collect();
        TypeQueues::new("c-t-tasks".into(), tiers)
    }

    #[test]
    fn a_priority_goes_to_the_highest_tier_it_reaches_else_the_base_queue() {
        let q = queues(&[("low", 0), ("urgent", 10), ("mid", 5)]);
        for (priority, want) in [
            (1000, "c-t-tasks-urgent"),
            (10, "c-t-tasks-urgent"),
            (9, "c-t-tasks-mid"),
            (5, "c-t-tasks-mid"),
            (0, "c-t-tasks-low"),
            (-1, "c-t-tasks"),
            (-1000, "c-t-tasks"),
        ] {
            assert_eq!(q.route(priority).name, want, "priority {priority}");
        }
        assert_eq!(queues(&[]).route(1000).name, "c-t-tasks");
    }

    #[test]
    fn receives_take_tiers_highest_first_then_the_base_queue() {
        let q = queues(&[("low", 0), ("urgent", 10)]);
        let order: Vec<&str> = q.receive_order().iter().map(|r| r.name).collect();
        assert_eq!(order, ["c-t-tasks-urgent", "c-t-tasks-low", "c-t-tasks"]);
        let single = queues(&[]);
        let single: Vec<&str> = single.receive_order().iter().map(|r| r.name).collect();
        assert_eq!(single, ["c-t-tasks"]);
    }

    #[test]
    fn receipts_name_their_queue_and_base_receipts_stay_untagged() {
        let q = queues(&[("urgent", 10)]);
        let handle = "AQEBzWwaftRI0KuVm4tP+/7q1rGgNqicHq/RNsNkkA6nPSQ=";
        let urgent = q.route(10);
        let tagged = tag_receipt(urgent, handle);
        assert_eq!(tagged, format!("urgent~{handle}"));
        assert_eq!(q.for_receipt(&tagged), (urgent, handle));
        let base = q.route(0);
        assert_eq!(
            tag_receipt(base, handle),
            handle,
            "base receipts as SQS gave them"
        );
        assert_eq!(q.for_receipt(handle), (base, handle));
        assert_eq!(
            q.for_receipt(&format!("gone~{handle}")),
            (base, handle),
            "a tag naming no tier means the base queue"
        );
        assert_eq!(q.for_receipt(""), (base, ""));
    }
}
