//! Structural checks on rendered jobs in Nomad API JSON (the output of
//! [`crate::jobspec::parse_jobspec`]): what the coordinator relies on when it dispatches.
//!
//! Pure, no I/O. Each problem is one line `FILE: FIELD: MESSAGE`, the field as a path into
//! the API JSON (`Job.TaskGroups[0].Tasks[0].Resources.CPU`), so templates written by
//! operators (`--templates`) fail `validate` with the field to fix.

use serde_json::Value;

/// Environment variables every agent gets (DESIGN.md §5, the agent contract).
pub const AGENT_CONTRACT_ENV: &[&str] = &[
    "AO_TASK_ID",
    "AO_ATTEMPT",
    "AO_AGENT_TYPE",
    "AO_TASK_FILE",
    "AO_RESULT_FILE",
];

/// Checks that `job_json` (`{"Job": {...}}`) is a dispatchable agent job: a parameterized
/// batch job whose payload is required, with `task_id` in `MetaRequired`, a task with
/// `DispatchPayload`, the agent contract's environment, and positive `CPU` / `MemoryMB` on
/// every task. Returns one message per problem; empty means the job is fine.
pub fn check_agent_job(job_json: &Value, file: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut problem =
        |field: &str, message: String| problems.push(format!("{file}: {field}: {message}"));
    let Some(job) = job_json.get("Job").filter(|j| j.is_object()) else {
        problem("Job", "missing: expected {\"Job\": {...}}".into());
        return problems;
    };
    match job.get("Type").and_then(Value::as_str) {
        Some("batch") => {}
        Some(other) => problem(
            "Job.Type",
            format!("is {other:?}; agent jobs must be \"batch\""),
        ),
        None => problem(
            "Job.Type",
            "not set; agent jobs must be `type = \"batch\"`".into(),
        ),
    }
    match job.get("ParameterizedJob").filter(|p| p.is_object()) {
        None => problem(
            "Job.ParameterizedJob",
            "missing: agent jobs need a `parameterized` block".into(),
        ),
        Some(p) => {
            if p.get("Payload").and_then(Value::as_str) != Some("required") {
                problem(
                    "Job.ParameterizedJob.Payload",
                    format!(
                        "is {}; must be \"required\" (the task is the payload)",
                        show(p.get("Payload"))
                    ),
                );
            }
            let required = p.get("MetaRequired").and_then(Value::as_array);
            if !required.is_some_and(|keys| keys.iter().any(|k| k == "task_id")) {
                problem(
                    "Job.ParameterizedJob.MetaRequired",
                    format!(
                        "is {}; must contain \"task_id\"",
                        show(p.get("MetaRequired"))
                    ),
                );
            }
        }
    }
    let groups = job
        .get("TaskGroups")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if groups.is_empty() {
        problem(
            "Job.TaskGroups",
            "no group: an agent job needs one group with one task".into(),
        );
    }
    let mut payload_tasks = 0;
    for (g, group) in groups.iter().enumerate() {
        let tasks = group
            .get("Tasks")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        if tasks.is_empty() {
            problem(&format!("Job.TaskGroups[{g}].Tasks"), "no task".into());
        }
        for (t, task) in tasks.iter().enumerate() {
            let at = format!("Job.TaskGroups[{g}].Tasks[{t}]");
            for field in ["CPU", "MemoryMB"] {
                let value = task.get("Resources").and_then(|r| r.get(field));
                if !is_positive(value) {
                    problem(
                        &format!("{at}.Resources.{field}"),
                        format!("is {}; must be a positive number", show(value)),
                    );
                }
            }
            let Some(payload) = task.get("DispatchPayload") else {
                continue;
            };
            payload_tasks += 1;
            if payload
                .get("File")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                problem(
                    &format!("{at}.DispatchPayload.File"),
                    "not set: the payload must be written to a file".into(),
                );
            }
            let env = task.get("Env");
            let missing: Vec<&str> = AGENT_CONTRACT_ENV
                .iter()
                .copied()
                .filter(|name| {
                    env.and_then(|e| e.get(*name))
                        .and_then(Value::as_str)
                        .is_none()
                })
                .collect();
            if !missing.is_empty() {
                problem(
                    &format!("{at}.Env"),
                    format!("missing the agent contract's {}", missing.join(", ")),
                );
            }
        }
    }
    if payload_tasks == 0 && !groups.is_empty() {
        problem(
            "Job.TaskGroups[*].Tasks[*].DispatchPayload",
            "no task has a `dispatch_payload` block: the agent would never see its task".into(),
        );
    }
    problems
}

/// Checks the coordinator job: a service job with a task, positive resources, and services on
/// the `http` port with an HTTP check on `/health` and on the `metrics` port.
pub fn check_coordinator_job(job_json: &Value, file: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut problem =
        |field: &str, message: String| problems.push(format!("{file}: {field}: {message}"));
    let Some(job) = job_json.get("Job").filter(|j| j.is_object()) else {
        problem("Job", "missing: expected {\"Job\": {...}}".into());
        return problems;
    };
    // Nomad's default job type is "service".
    if let Some(other) = job
        .get("Type")
        .and_then(Value::as_str)
        .filter(|t| *t != "service")
    {
        problem(
            "Job.Type",
            format!("is {other:?}; the coordinator is a \"service\" job"),
        );
    }
    let groups = job
        .get("TaskGroups")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut tasks = 0;
    let mut services = Vec::new();
    for (g, group) in groups.iter().enumerate() {
        services.extend(
            group
                .get("Services")
                .and_then(Value::as_array)
                .into_iter()
                .flatten(),
        );
        for (t, task) in group
            .get("Tasks")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            tasks += 1;
            services.extend(
                task.get("Services")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten(),
            );
            for field in ["CPU", "MemoryMB"] {
                let value = task.get("Resources").and_then(|r| r.get(field));
                if !is_positive(value) {
                    problem(
                        &format!("Job.TaskGroups[{g}].Tasks[{t}].Resources.{field}"),
                        format!("is {}; must be a positive number", show(value)),
                    );
                }
            }
        }
    }
    if tasks == 0 {
        problem(
            "Job.TaskGroups",
            "no task: the coordinator job needs its task".into(),
        );
    }
    let port = |s: &&Value, label: &str| s.get("PortLabel").and_then(Value::as_str) == Some(label);
    let health_checked = services.iter().filter(|s| port(s, "http")).any(|s| {
        s.get("Checks")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|c| {
                c.get("Type").and_then(Value::as_str) == Some("http")
                    && c.get("Path").and_then(Value::as_str) == Some("/health")
            })
    });
    if !health_checked {
        problem(
            "Services",
            "no service on port \"http\" with an HTTP check on /health".into(),
        );
    }
    if !services.iter().any(|s| port(s, "metrics")) {
        problem(
            "Services",
            "no service on port \"metrics\" (Prometheus scraping)".into(),
        );
    }
    problems
}

/// A whole number above zero.
fn is_positive(value: Option<&Value>) -> bool {
    value.and_then(Value::as_i64).is_some_and(|n| n > 0)
}

fn show(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "not set".into(),
        Some(v) => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn good_agent() -> Value {
        json!({"Job": {
            "ID": "c-coder-agent", "Type": "batch",
            "ParameterizedJob": {"Payload": "required", "MetaRequired": ["task_id"]},
            "TaskGroups": [{"Tasks": [{
                "Env": {"AO_TASK_ID": "a", "AO_ATTEMPT": "b", "AO_AGENT_TYPE": "c", "AO_TASK_FILE": "d", "AO_RESULT_FILE": "e"},
                "DispatchPayload": {"File": "task.json"},
                "Resources": {"CPU": 100, "MemoryMB": 64}
            }]}]
        }})
    }

    /// Applies `edit` to a good agent job and expects exactly the problems containing `needles`.
    fn check(edit: impl FnOnce(&mut Value), needles: &[&str]) {
        let mut job = good_agent();
        edit(&mut job);
        let problems = check_agent_job(&job, "x.nomad.hcl");
        assert_eq!(problems.len(), needles.len(), "{problems:#?}");
        for (problem, needle) in problems.iter().zip(needles) {
            assert!(problem.starts_with("x.nomad.hcl: "), "{problem}");
            assert!(
                problem.contains(needle),
                "{problem} should mention {needle}"
            );
        }
    }

    #[test]
    fn agent_job_checks() {
        check(|_| {}, &[]);
        check(
            |j| j["Job"]["Type"] = json!("service"),
            &["Job.Type: is \"service\""],
        );
        check(
            |j| {
                if let Some(job) = j["Job"].as_object_mut() {
                    job.remove("Type");
                }
            },
            &["Job.Type: not set"],
        );
        check(
            |j| j["Job"]["ParameterizedJob"] = Value::Null,
            &["Job.ParameterizedJob: missing"],
        );
        check(
            |j| j["Job"]["ParameterizedJob"]["Payload"] = json!("optional"),
            &["Job.ParameterizedJob.Payload"],
        );
        check(
            |j| j["Job"]["ParameterizedJob"]["MetaRequired"] = json!(["x"]),
            &["MetaRequired: is [\"x\"]; must contain \"task_id\""],
        );
        check(
            |j| j["Job"]["TaskGroups"][0]["Tasks"][0]["Resources"]["CPU"] = json!(0),
            &["Job.TaskGroups[0].Tasks[0].Resources.CPU: is 0"],
        );
        check(
            |j| j["Job"]["TaskGroups"][0]["Tasks"][0]["Resources"] = json!({}),
            &[
                "Resources.CPU: is not set",
                "Resources.MemoryMB: is not set",
            ],
        );
        check(
            |j| j["Job"]["TaskGroups"][0]["Tasks"][0]["DispatchPayload"]["File"] = json!(""),
            &["DispatchPayload.File"],
        );
        check(
            |j| {
                if let Some(t) = j["Job"]["TaskGroups"][0]["Tasks"][0].as_object_mut() {
                    t.remove("DispatchPayload");
                }
            },
            &["DispatchPayload: no task has"],
        );
        check(
            |j| {
                if let Some(env) = j["Job"]["TaskGroups"][0]["Tasks"][0]["Env"].as_object_mut() {
                    env.remove("AO_TASK_ID");
                }
            },
            &["Env: missing the agent contract's AO_TASK_ID"],
        );
        check(
            |j| j["Job"]["TaskGroups"] = json!([]),
            &["Job.TaskGroups: no group"],
        );
        check(|j| *j = json!({}), &["Job: missing"]);
    }

    #[test]
    fn coordinator_job_checks() {
        let good = json!({"Job": {"Type": "service", "TaskGroups": [{
            "Services": [
                {"PortLabel": "http", "Checks": [{"Type": "http", "Path": "/health"}]},
                {"PortLabel": "metrics"}
            ],
            "Tasks": [{"Resources": {"CPU": 500, "MemoryMB": 512}}]
        }]}});
        assert_eq!(check_coordinator_job(&good, "c"), Vec::<String>::new());
        let mut bad = good.clone();
        bad["Job"]["TaskGroups"][0]["Services"] = json!([]);
        bad["Job"]["Type"] = json!("batch");
        let problems = check_coordinator_job(&bad, "c");
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(problems[0].contains("Job.Type"));
        assert!(problems[1].contains("/health"));
        assert!(problems[2].contains("metrics"));
    }
}
