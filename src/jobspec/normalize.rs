//! Nomad's post-decode normalisation (`jobspec2/parse_job.go` `normalizeJob`), applied to
//! the decoded JSON so the output matches `nomad job run -output`:
//!
//! * `ID`/`Name` default to the job label; a periodic job with `cron`/`crons` gets
//!   `SpecType: "cron"`.
//! * Job-level `task` blocks become groups of one task, placed before the other groups.
//! * `vault` blocks get `Env: true`, `DisableFile: false`, `ChangeMode: "restart"`; tasks
//!   without one inherit the group's, else the job's.
//! * Templates get `ChangeMode: "restart"`, `Perms: "0644"`, `Splay: 5s`,
//!   `ErrMissingKey: false`; change scripts get `Args: []`, `Timeout: 5s`,
//!   `FailOnError: false`.
//! * Ports with `static > 0` move from `DynamicPorts` to `ReservedPorts`.
//! * The unnamed (or `"default"`) identity moves from `Identities` to `Identity`.

use serde_json::{Map, Value};

use super::decode::reorder;
use super::schema::{CHANGE_SCRIPT, GROUP, JOB, NETWORK, PERIODIC, TASK, TEMPLATE, VAULT};

const FIVE_SECONDS_NS: i64 = 5_000_000_000;

type Object = Map<String, Value>;

/// Normalises a decoded `job` block labelled `label`.
pub(crate) fn normalize_job(job: &mut Object, label: &str) {
    job.entry("ID")
        .or_insert_with(|| Value::String(label.to_string()));
    job.entry("Name")
        .or_insert_with(|| Value::String(label.to_string()));
    if let Some(Value::Object(periodic)) = job.get_mut("Periodic") {
        if periodic.contains_key("Spec") || periodic.contains_key("Specs") {
            periodic.insert("SpecType".into(), Value::String("cron".into()));
            reorder(periodic, &PERIODIC);
        }
    }
    let job_vault = match job.remove("_Vault") {
        Some(Value::Object(mut vault)) => {
            normalize_vault(&mut vault);
            Some(vault)
        }
        _ => None,
    };
    if let Some(Value::Array(tasks)) = job.remove("_Tasks") {
        let mut groups: Vec<Value> = tasks.into_iter().map(group_of_one).collect();
        if let Some(Value::Array(existing)) = job.remove("TaskGroups") {
            groups.extend(existing);
        }
        job.insert("TaskGroups".into(), Value::Array(groups));
    }
    for group in objects_mut(job.get_mut("TaskGroups")) {
        normalize_group(group, job_vault.as_ref());
    }
    reorder(job, &JOB);
}

/// A job-level `task` becomes a group of the same name holding just that task.
fn group_of_one(task: Value) -> Value {
    let mut group = Object::new();
    if let Some(name) = task.get("Name") {
        group.insert("Name".into(), name.clone());
    }
    group.insert("Tasks".into(), Value::Array(vec![task]));
    Value::Object(group)
}

fn normalize_group(group: &mut Object, job_vault: Option<&Object>) {
    let group_vault = match group.remove("_Vault") {
        Some(Value::Object(vault)) => Some(vault),
        _ => None,
    };
    normalize_networks(group.get_mut("Networks"));
    for task in objects_mut(group.get_mut("Tasks")) {
        if let Some(Value::Object(resources)) = task.get_mut("Resources") {
            normalize_networks(resources.get_mut("Networks"));
        }
        for template in objects_mut(task.get_mut("Templates")) {
            normalize_template(template);
        }
        if !task.contains_key("Vault") {
            if let Some(vault) = group_vault.as_ref() {
                task.insert("Vault".into(), Value::Object(vault.clone()));
            }
        }
        match task.get_mut("Vault") {
            Some(Value::Object(vault)) => normalize_vault(vault),
            _ => {
                if let Some(vault) = job_vault {
                    task.insert("Vault".into(), Value::Object(vault.clone()));
                }
            }
        }
        split_default_identity(task);
        reorder(task, &TASK);
    }
    reorder(group, &GROUP);
}

fn normalize_vault(vault: &mut Object) {
    default(vault, "Env", Value::Bool(true));
    default(vault, "DisableFile", Value::Bool(false));
    default(vault, "ChangeMode", Value::String("restart".into()));
    reorder(vault, &VAULT);
}

fn normalize_template(template: &mut Object) {
    default(template, "ChangeMode", Value::String("restart".into()));
    default(template, "Perms", Value::String("0644".into()));
    default(template, "Splay", Value::from(FIVE_SECONDS_NS));
    default(template, "ErrMissingKey", Value::Bool(false));
    if let Some(Value::Object(script)) = template.get_mut("ChangeScript") {
        default(script, "Args", Value::Array(Vec::new()));
        default(script, "Timeout", Value::from(FIVE_SECONDS_NS));
        default(script, "FailOnError", Value::Bool(false));
        reorder(script, &CHANGE_SCRIPT);
    }
    reorder(template, &TEMPLATE);
}

/// Ports with a static value > 0 are reserved; the rest stay dynamic.
fn normalize_networks(networks: Option<&mut Value>) {
    for network in objects_mut(networks) {
        let Some(Value::Array(ports)) = network.remove("DynamicPorts") else {
            continue;
        };
        let (reserved, dynamic): (Vec<Value>, Vec<Value>) = ports.into_iter().partition(|p| {
            p.get("Value")
                .and_then(Value::as_i64)
                .is_some_and(|v| v > 0)
        });
        if !reserved.is_empty() {
            network.insert("ReservedPorts".into(), Value::Array(reserved));
        }
        if !dynamic.is_empty() {
            network.insert("DynamicPorts".into(), Value::Array(dynamic));
        }
        reorder(network, &NETWORK);
    }
}

/// Moves the unnamed (or `"default"`) identity to `Identity`, as Nomad does for pre-1.7
/// compatibility. Nomad leaves an empty (non-nil) `Identities` slice behind.
fn split_default_identity(task: &mut Object) {
    let Some(Value::Array(identities)) = task.get_mut("Identities") else {
        return;
    };
    let is_default = |id: &Value| {
        id.get("Name")
            .and_then(Value::as_str)
            .is_none_or(|name| name.is_empty() || name == "default")
    };
    if let Some(position) = identities.iter().position(is_default) {
        let identity = identities.remove(position);
        task.insert("Identity".into(), identity);
    }
}

fn default(map: &mut Object, key: &str, value: Value) {
    map.entry(key).or_insert(value);
}

/// The objects inside an optional JSON array.
fn objects_mut(value: Option<&mut Value>) -> impl Iterator<Item = &mut Object> {
    let items: &mut [Value] = match value {
        Some(Value::Array(items)) => items,
        _ => &mut [],
    };
    items.iter_mut().filter_map(Value::as_object_mut)
}
