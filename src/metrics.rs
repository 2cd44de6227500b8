//! Prometheus metric names (DESIGN.md §9) and the recorder. Only this module spells them.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const QUEUE_DEPTH: &str = "agent_orchestrator_queue_depth";
pub const TASKS_TOTAL: &str = "agent_orchestrator_tasks_total";
pub const DISPATCH_DURATION: &str = "agent_orchestrator_dispatch_duration_seconds";
pub const RUNNING_JOBS: &str = "agent_orchestrator_running_jobs";
pub const DISPATCH_CAPACITY: &str = "agent_orchestrator_dispatch_capacity";
pub const WEBHOOK_EVENTS_TOTAL: &str = "agent_orchestrator_webhook_events_total";
pub const CIRCUIT_OPEN: &str = "agent_orchestrator_circuit_open";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once and returns the handle that renders `/metrics`.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(DISPATCH_DURATION.to_string()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0,
                    ],
                )
                .map(|b| b.build_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Another recorder may already be installed (tests in one process): keep ours local.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    metrics::describe_gauge!(
        QUEUE_DEPTH,
        "Tasks waiting in the agent type's queue (visible + delayed)."
    );
    metrics::describe_counter!(
        TASKS_TOTAL,
        "Tasks that reached a terminal status, by outcome."
    );
    metrics::describe_histogram!(
        DISPATCH_DURATION,
        metrics::Unit::Seconds,
        "Time to hand one attempt to the executor."
    );
    metrics::describe_gauge!(
        RUNNING_JOBS,
        "Attempts holding a slot (dispatched or running)."
    );
    metrics::describe_gauge!(
        DISPATCH_CAPACITY,
        "Free slots: max_instances minus running_jobs."
    );
    metrics::describe_counter!(
        WEBHOOK_EVENTS_TOTAL,
        "GitHub webhook deliveries by event, action and result."
    );
    metrics::describe_gauge!(
        CIRCUIT_OPEN,
        "1 while the agent type's circuit breaker stops dispatching."
    );
}

pub fn task_finished(agent_type: &str, outcome: &'static str) {
    metrics::counter!(TASKS_TOTAL, "agent_type" => agent_type.to_string(), "outcome" => outcome)
        .increment(1);
}

pub fn dispatch_took(elapsed: Duration) {
    metrics::histogram!(DISPATCH_DURATION).record(elapsed.as_secs_f64());
}

/// The per-type gauges, set together after each reconcile.
pub fn agent_gauges(
    agent_type: &str,
    queue_depth: u64,
    running: usize,
    capacity: usize,
    circuit_open: bool,
) {
    let t = agent_type.to_string();
    metrics::gauge!(QUEUE_DEPTH, "agent_type" => t.clone()).set(queue_depth as f64);
    metrics::gauge!(RUNNING_JOBS, "agent_type" => t.clone()).set(running as f64);
    metrics::gauge!(DISPATCH_CAPACITY, "agent_type" => t.clone()).set(capacity as f64);
    metrics::gauge!(CIRCUIT_OPEN, "agent_type" => t).set(if circuit_open { 1.0 } else { 0.0 });
}
