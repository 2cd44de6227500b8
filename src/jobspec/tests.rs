//! Unit tests for the jobspec parser, one section per block family. Each asserts the exact
//! Nomad API JSON (or the exact located error) for a small jobspec.

use proptest::prelude::*;
use serde_json::{json, Value};

use super::{parse_jobspec, JobspecError};

const FILE: &str = "jobs/test.nomad.hcl";

fn parse(hcl: &str) -> Value {
    match parse_jobspec(hcl, FILE) {
        Ok(v) => v,
        Err(e) => panic!("parse failed: {e}\n--- source ---\n{hcl}"),
    }
}

fn job(hcl: &str) -> Value {
    parse(hcl)["Job"].clone()
}

/// Asserts the `Job` object for `hcl` equals `expected` exactly.
fn check(hcl: &str, expected: Value) {
    let got = job(hcl);
    assert_eq!(
        got,
        expected,
        "\n got: {}\nwant: {}",
        serde_json::to_string_pretty(&got).unwrap_or_default(),
        serde_json::to_string_pretty(&expected).unwrap_or_default()
    );
}

/// The first group of a job whose group body is `body`.
fn group(body: &str) -> Value {
    job(&format!("job \"j\" {{\n group \"g\" {{\n{body}\n }}\n}}\n"))["TaskGroups"][0].clone()
}

/// The first task of a job whose task body is `body`.
fn task(body: &str) -> Value {
    group(&format!("task \"t\" {{\n{body}\n}}"))["Tasks"][0].clone()
}

fn err(hcl: &str) -> JobspecError {
    match parse_jobspec(hcl, FILE) {
        Ok(v) => panic!("expected an error, got {v}"),
        Err(e) => e,
    }
}

/// Asserts the error text (`<file>:<line>: <message>`) is exactly `expected`.
fn check_err(hcl: &str, expected: &str) {
    assert_eq!(err(hcl).to_string(), expected);
}

// ------------------------------------------------------------------ job

#[test]
fn job_attributes_and_label() {
    check(
        r#"
job "web" {
  region      = "eu"
  namespace   = "apps"
  type        = "batch"
  priority    = 70
  all_at_once = true
  datacenters = ["dc1", "dc2"]
  node_pool   = "prod"
}
"#,
        json!({
            "Region": "eu", "Namespace": "apps", "ID": "web", "Name": "web", "Type": "batch",
            "Priority": 70, "AllAtOnce": true, "Datacenters": ["dc1", "dc2"], "NodePool": "prod"
        }),
    );
}

#[test]
fn job_id_and_name_attributes_override_label() {
    check(
        r#"job "label" {
  id   = "the-id"
  name = "The Name"
}"#,
        json!({"ID": "the-id", "Name": "The Name"}),
    );
}

#[test]
fn output_follows_struct_order_not_source_order() {
    let text = parse(
        r#"job "x" {
  node_pool = "p"
  type      = "batch"
  region    = "r"
}"#,
    )
    .to_string();
    assert_eq!(
        text,
        r#"{"Job":{"Region":"r","ID":"x","Name":"x","Type":"batch","NodePool":"p"}}"#
    );
}

#[test]
fn meta_as_block_or_attribute_is_a_sorted_string_map() {
    check(
        r#"job "x" {
  meta {
    zeta   = "z"
    my-key = "my-value"
    count  = 3
  }
}"#,
        json!({"ID": "x", "Name": "x", "Meta": {"count": "3", "my-key": "my-value", "zeta": "z"}}),
    );
    check(
        r#"job "x" {
  meta = { "dotted.key" = "v", plain = true }
}"#,
        json!({"ID": "x", "Name": "x", "Meta": {"dotted.key": "v", "plain": "true"}}),
    );
    let text = parse("job \"x\" {\n meta {\n b = \"1\"\n a = \"2\"\n }\n}").to_string();
    assert!(text.contains(r#""Meta":{"a":"2","b":"1"}"#), "{text}");
}

#[test]
fn ui_block_uses_documented_json_names() {
    check(
        r#"job "x" {
  ui {
    description = "A **job**"
    link {
      label = "Docs"
      url   = "https://example.com"
    }
  }
}"#,
        json!({"ID": "x", "Name": "x", "Ui": {
            "Description": "A **job**",
            "Links": [{"Label": "Docs", "Url": "https://example.com"}]
        }}),
    );
}

// ------------------------------------------------------------------ placement

#[test]
fn constraint_defaults_and_shorthands() {
    let j = job(r#"job "x" {
  constraint {
    attribute = "${attr.kernel.name}"
    value     = "linux"
  }
  constraint {
    attribute = "${attr.kernel.name}"
    operator  = "set_contains_any"
    value     = "darwin,linux"
  }
  constraint {
    attribute = "${attr.nomad.version}"
    version   = ">= 1.7"
  }
  constraint {
    attribute = "${meta.rack}"
    regexp    = "^r[0-9]+$"
  }
  constraint {
    distinct_hosts = true
  }
  constraint {
    distinct_property = "${meta.rack}"
    value             = "2"
  }
  constraint {
    # empty, as in the docs
  }
}"#);
    assert_eq!(
        j["Constraints"],
        json!([
            {"LTarget": "${attr.kernel.name}", "RTarget": "linux", "Operand": "="},
            {"LTarget": "${attr.kernel.name}", "RTarget": "darwin,linux", "Operand": "set_contains_any"},
            {"LTarget": "${attr.nomad.version}", "RTarget": ">= 1.7", "Operand": "version"},
            {"LTarget": "${meta.rack}", "RTarget": "^r[0-9]+$", "Operand": "regexp"},
            {"LTarget": "", "RTarget": "", "Operand": "distinct_hosts"},
            {"LTarget": "${meta.rack}", "RTarget": "2", "Operand": "distinct_property"},
            {"LTarget": "", "RTarget": "", "Operand": "="}
        ])
    );
}

#[test]
fn constraint_shorthands_nomad_ignores_are_rejected_not_dropped() {
    let e = err(
        "job \"x\" {\n  constraint {\n    attribute = \"a\"\n    set_contains_any = \"b\"\n  }\n}",
    );
    assert_eq!(e.line(), Some(4));
    assert!(
        e.to_string().starts_with(
            "jobs/test.nomad.hcl:4: unsupported attribute `set_contains_any` in `constraint` block of job \"x\""
        ),
        "{e}"
    );
}

#[test]
fn affinity_and_spread() {
    let g = group(
        r#"
affinity {
  attribute = "${node.datacenter}"
  value     = "us-west1"
  weight    = 100
}
affinity {
  attribute        = "${meta.tags}"
  set_contains_all = "a,b"
  weight           = -50
}
spread {
  attribute = "${node.datacenter}"
  weight    = 70
  target "us-east1" {
    percent = 60
  }
  target "us-west1" {
    percent = 40
  }
}"#,
    );
    assert_eq!(
        g["Affinities"],
        json!([
            {"LTarget": "${node.datacenter}", "RTarget": "us-west1", "Operand": "=", "Weight": 100},
            {"LTarget": "${meta.tags}", "RTarget": "a,b", "Operand": "set_contains_all", "Weight": -50}
        ])
    );
    assert_eq!(
        g["Spreads"],
        json!([{"Attribute": "${node.datacenter}", "Weight": 70, "SpreadTarget": [
            {"Value": "us-east1", "Percent": 60},
            {"Value": "us-west1", "Percent": 40}
        ]}])
    );
}

// ------------------------------------------------------------------ parameterized / periodic

#[test]
fn parameterized_and_dispatch_payload() {
    check(
        r#"job "p" {
  type = "batch"
  parameterized {
    payload       = "required"
    meta_required = ["foo", "bar"]
    meta_optional = ["baz"]
  }
  group "g" {
    task "t" {
      driver = "exec"
      dispatch_payload {
        file = "x"
      }
    }
  }
}"#,
        json!({
            "ID": "p", "Name": "p", "Type": "batch",
            "TaskGroups": [{"Name": "g", "Tasks": [{
                "Name": "t", "Driver": "exec", "DispatchPayload": {"File": "x"}
            }]}],
            "ParameterizedJob": {"Payload": "required", "MetaRequired": ["foo", "bar"], "MetaOptional": ["baz"]}
        }),
    );
}

#[test]
fn periodic_cron_gets_spec_type() {
    check(
        r#"job "p" {
  periodic {
    cron             = "*/5 * * *"
    prohibit_overlap = true
    time_zone        = "Europe/Minsk"
  }
}"#,
        json!({"ID": "p", "Name": "p", "Periodic": {
            "Spec": "*/5 * * *", "SpecType": "cron", "ProhibitOverlap": true, "TimeZone": "Europe/Minsk"
        }}),
    );
    let p = job("job \"p\" {\n periodic {\n crons = [\"1 * * * *\", \"2 * * * *\"]\n enabled = false\n }\n}")
        ["Periodic"]
        .clone();
    assert_eq!(
        p.to_string(),
        r#"{"Enabled":false,"Specs":["1 * * * *","2 * * * *"],"SpecType":"cron"}"#
    );
    // No cron: Nomad sets no SpecType.
    assert_eq!(job("job \"p\" {\n periodic {}\n}")["Periodic"], json!({}));
}

// ------------------------------------------------------------------ update / migrate / reschedule

#[test]
fn strategies_convert_durations_to_nanoseconds() {
    check(
        r#"job "x" {
  update {
    stagger           = "30s"
    max_parallel      = 2
    health_check      = "checks"
    min_healthy_time  = "10s"
    healthy_deadline  = "5m"
    progress_deadline = "1h"
    canary            = 1
    auto_revert       = true
    auto_promote      = false
  }
  migrate {
    max_parallel     = 1
    health_check     = "task_states"
    min_healthy_time = "1.5s"
    healthy_deadline = "2m30s"
  }
  reschedule {
    attempts       = 3
    interval       = "24h"
    delay          = "250ms"
    delay_function = "exponential"
    max_delay      = "1h"
    unlimited      = false
  }
}"#,
        json!({
            "ID": "x", "Name": "x",
            "Update": {
                "Stagger": 30_000_000_000_i64, "MaxParallel": 2, "HealthCheck": "checks",
                "MinHealthyTime": 10_000_000_000_i64, "HealthyDeadline": 300_000_000_000_i64,
                "ProgressDeadline": 3_600_000_000_000_i64, "Canary": 1, "AutoRevert": true,
                "AutoPromote": false
            },
            "Reschedule": {
                "Attempts": 3, "Interval": 86_400_000_000_000_i64, "Delay": 250_000_000,
                "DelayFunction": "exponential", "MaxDelay": 3_600_000_000_000_i64, "Unlimited": false
            },
            "Migrate": {
                "MaxParallel": 1, "HealthCheck": "task_states", "MinHealthyTime": 1_500_000_000,
                "HealthyDeadline": 150_000_000_000_i64
            }
        }),
    );
}

#[test]
fn bad_duration_is_located() {
    check_err(
        "job \"x\" {\n  update {\n    min_healthy_time = \"10 seconds\"\n  }\n}",
        "jobs/test.nomad.hcl:3: attribute `min_healthy_time` in `update` block of job \"x\": invalid duration \"10 seconds\"",
    );
}

// ------------------------------------------------------------------ group

#[test]
fn group_level_settings() {
    let g = group(
        r#"
count = 3
restart {
  attempts         = 2
  interval         = "30m"
  delay            = "15s"
  mode             = "fail"
  render_templates = true
}
ephemeral_disk {
  sticky  = true
  migrate = true
  size    = 300
}
disconnect {
  lost_after = "1h"
  replace    = false
  reconcile  = "keep_original"
}
shutdown_delay   = "5s"
max_run_duration = "2h"
consul {
  namespace = "ns"
}
prevent_reschedule_on_lost = true
meta {
  team = "infra"
}"#,
    );
    assert_eq!(
        g,
        json!({
            "Name": "g", "Count": 3,
            "RestartPolicy": {"Interval": 1_800_000_000_000_i64, "Attempts": 2, "Delay": 15_000_000_000_i64, "Mode": "fail", "RenderTemplates": true},
            "Disconnect": {"LostAfter": 3_600_000_000_000_i64, "Replace": false, "Reconcile": "keep_original"},
            "EphemeralDisk": {"Sticky": true, "Migrate": true, "SizeMB": 300},
            "Meta": {"team": "infra"},
            "ShutdownDelay": 5_000_000_000_i64,
            "MaxRunDuration": 7_200_000_000_000_i64,
            "Consul": {"Namespace": "ns"},
            "PreventRescheduleOnLost": true
        })
    );
}

#[test]
fn network_ports_split_into_reserved_and_dynamic() {
    let g = group(
        r#"
network {
  mode     = "bridge"
  hostname = "web"
  port "http" {
    static       = 8080
    to           = 80
    host_network = "public"
  }
  port "db" {
    to = 6379
  }
  dns {
    servers = ["1.1.1.1"]
  }
}"#,
    );
    assert_eq!(
        g["Networks"].to_string(),
        json!([{
            "Mode": "bridge",
            "DNS": {"Servers": ["1.1.1.1"]},
            "ReservedPorts": [{"Label": "http", "Value": 8080, "To": 80, "HostNetwork": "public"}],
            "DynamicPorts": [{"Label": "db", "To": 6379}],
            "Hostname": "web"
        }])
        .to_string()
    );
    let only_static = group("network {\n port \"p\" {\n static = 1\n }\n}");
    assert_eq!(
        only_static["Networks"],
        json!([{"ReservedPorts": [{"Label": "p", "Value": 1}]}])
    );
}

#[test]
fn volumes_are_a_map_keyed_by_label() {
    let g = group(
        r#"
volume "certs" {
  type      = "host"
  source    = "ca-certificates"
  read_only = true
}
volume "data" {
  type            = "csi"
  source          = "db"
  access_mode     = "single-node-writer"
  attachment_mode = "file-system"
  per_alloc       = true
  mount_options {
    fs_type     = "ext4"
    mount_flags = ["noatime"]
  }
}"#,
    );
    assert_eq!(
        g["Volumes"],
        json!({
            "certs": {"Name": "certs", "Type": "host", "Source": "ca-certificates", "ReadOnly": true},
            "data": {"Name": "data", "Type": "csi", "Source": "db", "AccessMode": "single-node-writer",
                     "AttachmentMode": "file-system", "MountOptions": {"FSType": "ext4", "MountFlags": ["noatime"]},
                     "PerAlloc": true}
        })
    );
}

#[test]
fn group_scaling_defaults_type_and_requires_max() {
    let g = group(
        r#"
scaling {
  min     = 1
  max     = 10
  enabled = true
  policy {
    cooldown = "1m"
    check "cpu" {
      source = "prometheus"
    }
  }
}"#,
    );
    assert_eq!(
        g["Scaling"],
        json!({"Min": 1, "Max": 10, "Policy": {
            "check": [{"cpu": [{"source": "prometheus"}]}], "cooldown": "1m"
        }, "Enabled": true, "Type": "horizontal"})
    );
    check_err(
        "job \"x\" {\n  group \"g\" {\n    scaling {\n      min = 1\n    }\n  }\n}",
        "jobs/test.nomad.hcl:3: `scaling` block of group \"g\" requires `max`",
    );
}

// ------------------------------------------------------------------ task

#[test]
fn task_attributes() {
    let t = task(
        r#"
driver         = "docker"
user           = "nobody"
leader         = true
kill_timeout   = "20s"
kill_signal    = "SIGINT"
shutdown_delay = "10s"
kind           = "connect-proxy:web"
lifecycle {
  hook    = "prestart"
  sidecar = false
}
logs {
  max_files     = 10
  max_file_size = 15
  disabled      = false
}"#,
    );
    assert_eq!(
        t.to_string(),
        json!({
            "Name": "t", "Driver": "docker", "User": "nobody",
            "Lifecycle": {"Hook": "prestart", "Sidecar": false},
            "KillTimeout": 20_000_000_000_i64,
            "LogConfig": {"MaxFiles": 10, "MaxFileSizeMB": 15, "Disabled": false},
            "Leader": true, "ShutdownDelay": 10_000_000_000_i64, "KillSignal": "SIGINT",
            "Kind": "connect-proxy:web"
        })
        .to_string()
    );
}

#[test]
fn resources_use_api_units_and_names() {
    let t = task(
        r#"
resources {
  cpu        = 500
  cores      = 2
  memory     = 256
  memory_max = 512
  disk       = 64
  device "nvidia/gpu" {
    count = 2
    constraint {
      attribute = "${device.attr.memory}"
      operator  = ">="
      value     = "2 GiB"
    }
  }
}"#,
    );
    assert_eq!(
        t["Resources"],
        json!({
            "CPU": 500, "Cores": 2, "MemoryMB": 256, "MemoryMaxMB": 512, "DiskMB": 64,
            "Devices": [{"Name": "nvidia/gpu", "Count": 2, "Constraints": [
                {"LTarget": "${device.attr.memory}", "RTarget": "2 GiB", "Operand": ">="}
            ]}]
        })
    );
}

#[test]
fn env_block_and_attribute() {
    assert_eq!(
        task("env {\n  B = \"2\"\n  A = \"${NOMAD_ALLOC_DIR}/x\"\n}")["Env"].to_string(),
        r#"{"A":"${NOMAD_ALLOC_DIR}/x","B":"2"}"#
    );
    assert_eq!(
        task("env = { \"my.var\" = 1 }")["Env"],
        json!({"my.var": "1"})
    );
}

#[test]
fn driver_config_passes_through_like_nomad() {
    let t = task(
        r#"
driver = "docker"
config {
  image          = "redis:7"
  ports          = ["db"]
  auth_soft_fail = true
  memory_hard    = 1.5
  labels = {
    team = "x"
  }
  auth {
    username = "u"
    password = "p"
  }
  mount {
    type   = "bind"
    target = "/a"
  }
  mount {
    type   = "tmpfs"
    target = "/b"
  }
  logging "syslog" {
    tag = "web"
  }
  sysctl = {
    "net.core.somaxconn" = "16384"
  }
  nothing = null
}"#,
    );
    assert_eq!(
        t["Config"].to_string(),
        json!({
            "auth": [{"password": "p", "username": "u"}],
            "auth_soft_fail": true,
            "image": "redis:7",
            "labels": [{"team": "x"}],
            "logging": [{"syslog": [{"tag": "web"}]}],
            "memory_hard": 1.5,
            "mount": [{"target": "/a", "type": "bind"}, {"target": "/b", "type": "tmpfs"}],
            "nothing": null,
            "ports": ["db"],
            "sysctl": [{"net.core.somaxconn": "16384"}]
        })
        .to_string()
    );
}

#[test]
fn artifacts_volume_mounts_and_actions() {
    let t = task(
        r#"
artifact {
  source      = "https://example.com/file.tar.gz"
  destination = "local/some-directory"
  mode        = "dir"
  options {
    checksum = "md5:df6a4178aec9fbdc1d6d7e3634d1bc33"
  }
  headers {
    User-Agent = "nomad"
  }
}
volume_mount {
  volume           = "certs"
  destination      = "/etc/ssl/certs"
  read_only        = true
  propagation_mode = "private"
}
action "echo" {
  command = "/bin/echo"
  args    = ["hi"]
}"#,
    );
    assert_eq!(
        t["Artifacts"],
        json!([{
            "GetterSource": "https://example.com/file.tar.gz",
            "GetterOptions": {"checksum": "md5:df6a4178aec9fbdc1d6d7e3634d1bc33"},
            "GetterHeaders": {"User-Agent": "nomad"},
            "GetterMode": "dir",
            "RelativeDest": "local/some-directory"
        }])
    );
    assert_eq!(
        t["VolumeMounts"],
        json!([{"Volume": "certs", "Destination": "/etc/ssl/certs", "ReadOnly": true, "PropagationMode": "private"}])
    );
    assert_eq!(
        t["Actions"],
        json!([{"Name": "echo", "Command": "/bin/echo", "Args": ["hi"]}])
    );
}

#[test]
fn job_level_task_becomes_its_own_group_first() {
    let j = job(r#"job "x" {
  group "g" {
    task "a" {
      driver = "exec"
    }
  }
  task "solo" {
    driver = "raw_exec"
  }
}"#);
    assert_eq!(
        j["TaskGroups"],
        json!([
            {"Name": "solo", "Tasks": [{"Name": "solo", "Driver": "raw_exec"}]},
            {"Name": "g", "Tasks": [{"Name": "a", "Driver": "exec"}]}
        ])
    );
}

// ------------------------------------------------------------------ template

#[test]
fn template_defaults_and_heredocs() {
    let t = task(
        r#"
template {
  data        = <<EOF
KEY={{ key "service/my-key" }}
DIR=${NOMAD_ALLOC_DIR}
EOF
  destination = "local/file.env"
  env         = true
}
template {
  data = <<-EOT
    indented
      more
    EOT
  destination   = "local/b"
  change_mode   = "signal"
  change_signal = "SIGHUP"
  splay         = "10s"
  perms         = "600"
  wait {
    min = "5s"
    max = "1m"
  }
}
template {
  source      = "local/c.tpl"
  destination = "local/c"
  change_mode = "script"
  change_script {
    command = "/reload.sh"
  }
}"#,
    );
    assert_eq!(
        t["Templates"].to_string(),
        json!([
            {"DestPath": "local/file.env",
             "EmbeddedTmpl": "KEY={{ key \"service/my-key\" }}\nDIR=${NOMAD_ALLOC_DIR}\n",
             "ChangeMode": "restart", "Splay": 5_000_000_000_i64, "Perms": "0644", "Envvars": true, "ErrMissingKey": false},
            {"DestPath": "local/b", "EmbeddedTmpl": "indented\n  more\n", "ChangeMode": "signal",
             "ChangeSignal": "SIGHUP", "Splay": 10_000_000_000_i64, "Perms": "600",
             "Wait": {"Min": 5_000_000_000_i64, "Max": 60_000_000_000_i64}, "ErrMissingKey": false},
            {"SourcePath": "local/c.tpl", "DestPath": "local/c", "ChangeMode": "script",
             "ChangeScript": {"Command": "/reload.sh", "Args": [], "Timeout": 5_000_000_000_i64, "FailOnError": false},
             "Splay": 5_000_000_000_i64, "Perms": "0644", "ErrMissingKey": false}
        ])
        .to_string()
    );
}

// ------------------------------------------------------------------ vault / identity

#[test]
fn vault_is_normalised_and_inherited() {
    let j = job(r#"job "x" {
  vault {
    policies = ["job"]
  }
  group "with_group_vault" {
    vault {
      role = "group-role"
    }
    task "inherits_group" {}
    task "own" {
      vault {
        change_mode   = "signal"
        change_signal = "SIGHUP"
        env           = false
      }
    }
  }
  group "plain" {
    task "inherits_job" {}
  }
}"#);
    let tasks = |g: usize| j["TaskGroups"][g]["Tasks"].clone();
    assert_eq!(
        tasks(0)[0]["Vault"],
        json!({"Role": "group-role", "Env": true, "DisableFile": false, "ChangeMode": "restart"})
    );
    assert_eq!(
        tasks(0)[1]["Vault"],
        json!({"Env": false, "DisableFile": false, "ChangeMode": "signal", "ChangeSignal": "SIGHUP"})
    );
    assert_eq!(
        tasks(1)[0]["Vault"],
        json!({"Policies": ["job"], "Env": true, "DisableFile": false, "ChangeMode": "restart"})
    );
    assert!(j.get("_Vault").is_none() && j["TaskGroups"][0].get("_Vault").is_none());
}

#[test]
fn default_identity_moves_to_identity() {
    let t = task(
        r#"
identity {
  env  = true
  file = true
}
identity {
  name          = "vault_default"
  aud           = ["vault.io"]
  ttl           = "1h"
  change_mode   = "signal"
  change_signal = "SIGHUP"
}"#,
    );
    assert_eq!(t["Identity"], json!({"Env": true, "File": true}));
    assert_eq!(
        t["Identities"],
        json!([{"Name": "vault_default", "Audience": ["vault.io"], "ChangeMode": "signal",
                "ChangeSignal": "SIGHUP", "TTL": 3_600_000_000_000_i64}])
    );
    // Only a default identity: Nomad leaves an empty Identities slice.
    let only = task("identity {\n name = \"default\"\n env = true\n}");
    assert_eq!(only["Identity"], json!({"Name": "default", "Env": true}));
    assert_eq!(only["Identities"], json!([]));
}

// ------------------------------------------------------------------ services

#[test]
fn service_checks_and_check_restart() {
    let g = group(
        r#"
service {
  name     = "web"
  port     = "http"
  tags     = ["a"]
  provider = "consul"
  task     = "t"
  meta {
    version = "1"
  }
  check {
    name     = "alive"
    type     = "http"
    path     = "/health"
    interval = "10s"
    timeout  = "2s"
    method   = "POST"
    header {
      Authorization = ["Basic x"]
    }
    check_restart {
      limit           = 3
      grace           = "90s"
      ignore_warnings = true
    }
    on_update = "ignore_warnings"
  }
}"#,
    );
    assert_eq!(
        g["Services"],
        json!([{
            "Name": "web", "Tags": ["a"], "PortLabel": "http",
            "Checks": [{
                "Name": "alive", "Type": "http", "Path": "/health",
                "Interval": 10_000_000_000_i64, "Timeout": 2_000_000_000,
                "Header": {"Authorization": ["Basic x"]}, "Method": "POST",
                "CheckRestart": {"Limit": 3, "Grace": 90_000_000_000_i64, "IgnoreWarnings": true},
                "OnUpdate": "ignore_warnings"
            }],
            "Meta": {"version": "1"}, "TaskName": "t", "Provider": "consul"
        }])
    );
}

#[test]
fn connect_sidecar_is_supported_gateways_are_not() {
    let g = group(
        r#"
service {
  name = "api"
  port = 9001
  connect {
    sidecar_service {
      proxy {
        upstreams {
          destination_name = "db"
          local_bind_port  = 5432
        }
        config {
          protocol = "http"
        }
      }
    }
    sidecar_task {
      resources {
        cpu = 50
      }
    }
  }
}"#,
    );
    assert_eq!(
        g["Services"][0],
        json!({"Name": "api", "PortLabel": "9001", "Connect": {
            "SidecarService": {"Proxy": {
                "Upstreams": [{"DestinationName": "db", "LocalBindPort": 5432}],
                "Config": {"protocol": "http"}
            }},
            "SidecarTask": {"Resources": {"CPU": 50}}
        }})
    );
    let e = err(
        "job \"x\" {\n group \"g\" {\n  service {\n   connect {\n    gateway {}\n   }\n  }\n }\n}",
    );
    assert_eq!(e.line(), Some(5));
    assert!(e.message().contains("`gateway`"), "{e}");
}

// ------------------------------------------------------------------ strings and expressions

#[test]
fn escapes_and_runtime_references_come_out_as_nomad_sees_them() {
    let t = task(
        r#"
env {
  ESCAPED = "x $${attr.kernel.name} \"q\" %%{if}"
  RUNTIME = "x ${attr.kernel.name} \"q\""
  SPACED  = "${ node.unique.id }"
  META    = "${NOMAD_META_x}-${meta.rack}"
  INDEXED = "${meta["a.b"]}"
  BARE    = attr.kernel.name
  TABS    = "a\tb\\c"
}"#,
    );
    assert_eq!(
        t["Env"],
        json!({
            "BARE": "${attr.kernel.name}",
            "ESCAPED": "x ${attr.kernel.name} \"q\" %{if}",
            "INDEXED": "${meta[\"a.b\"]}",
            "META": "${NOMAD_META_x}-${meta.rack}",
            "RUNTIME": "x ${attr.kernel.name} \"q\"",
            "SPACED": "${node.unique.id}",
            "TABS": "a\tb\\c"
        })
    );
}

#[test]
fn variables_and_locals() {
    let j = job(r#"
variable "count" {
  type    = number
  default = "3"
}
variable "image" {
  type        = string
  description = "the image"
  default     = "redis"
  validation {
    condition     = true
    error_message = "never"
  }
}
variables {
  tag = 7
}
locals {
  full  = "${var.image}:${var.tag}"
  twice = var.count * 2
  unused = base64encode("never evaluated")
}
job "x" {
  group "g" {
    count = local.twice
    task "t" {
      config {
        image = local.full
        n     = var.count
        big   = var.count > 2 ? "yes" : "no"
      }
    }
  }
}"#);
    assert_eq!(j["TaskGroups"][0]["Count"], json!(6));
    assert_eq!(
        j["TaskGroups"][0]["Tasks"][0]["Config"],
        json!({"big": "yes", "image": "redis:7", "n": 3})
    );
}

#[test]
fn unevaluable_expressions_are_located_errors() {
    check_err(
        "job \"x\" {\n  group \"g\" {\n    count = upper(\"x\")\n  }\n}",
        "jobs/test.nomad.hcl:3: function call `upper(...)` is not supported (only literals, var.*, local.* and runtime ${...} references are evaluated)",
    );
    check_err(
        "job \"x\" {\n  type = var.nope\n}",
        "jobs/test.nomad.hcl:2: reference to undeclared input variable `var.nope`",
    );
    check_err(
        "variable \"v\" {}\njob \"x\" {\n  type = var.v\n}",
        "jobs/test.nomad.hcl:3: variable `v` has no default value (setting variables with -var is not supported)",
    );
    let cycle = err("locals {\n a = local.b\n b = local.a\n}\njob \"x\" {\n type = local.a\n}");
    assert!(cycle.message().contains("nests too deeply"), "{cycle}");
    assert!(cycle.line().is_some());
    let for_expr = err("job \"x\" {\n datacenters = [for d in [\"a\"] : d]\n}");
    assert_eq!(for_expr.line(), Some(2));
}

#[test]
fn template_directives_with_known_conditions_render() {
    let env = task(
        r#"
env {
  IF   = "%{if 1 < 2}yes%{else}no%{endif}"
  ELSE = "%{if false}yes%{else}no%{endif}"
  LIT  = "%%{if} $${x}"
}"#,
    )["Env"]
        .clone();
    assert_eq!(env, json!({"ELSE": "no", "IF": "yes", "LIT": "%{if} ${x}"}));
    let e = err("job \"x\" {\n  type = \"%{if attr.x}a%{endif}\"\n}");
    assert_eq!(e.line(), Some(2));
    assert!(e.message().contains("%%{"), "{e}");
    let e = err("job \"x\" {\n  type = \"${NOMAD_META_a * 2}\"\n}");
    assert!(e.message().contains("write $${ for a literal ${"), "{e}");
}

// ------------------------------------------------------------------ errors

#[test]
fn unsupported_blocks_and_attributes_name_themselves_and_their_line() {
    check_err(
        "job \"x\" {\n  group \"g\" {\n    task \"web\" {\n      driver = \"docker\"\n      csi_plugin {\n        id = \"x\"\n      }\n    }\n  }\n}",
        "jobs/test.nomad.hcl:5: unsupported block `csi_plugin` in task \"web\"",
    );
    check_err(
        "job \"x\" {\n  group \"g\" {\n    task \"web\" {\n      resources {\n        gpu = 1\n      }\n    }\n  }\n}",
        "jobs/test.nomad.hcl:5: unsupported attribute `gpu` in `resources` block of task \"web\"",
    );
    check_err(
        "job \"x\" {\n  multiregion {}\n}",
        "jobs/test.nomad.hcl:2: unsupported block `multiregion` in job \"x\": multiregion deployments are Nomad Enterprise and not supported by this parser",
    );
    check_err(
        "job \"x\" {\n  dynamic \"group\" {}\n}",
        "jobs/test.nomad.hcl:2: unsupported block `dynamic` in job \"x\"",
    );
}

#[test]
fn structural_mistakes_are_located() {
    check_err(
        "job \"x\" {\n  update {}\n  update {}\n}",
        "jobs/test.nomad.hcl:3: duplicate block `update` in job \"x\"",
    );
    check_err(
        "job \"x\" {\n  group {}\n}",
        "jobs/test.nomad.hcl:2: `group` block in job \"x\" needs exactly one label, e.g. `group \"name\" { ... }`",
    );
    check_err(
        "job \"x\" {\n  update \"u\" {}\n}",
        "jobs/test.nomad.hcl:2: `update` block in job \"x\" takes no label",
    );
    check_err(
        "job \"x\" {\n  update = {}\n}",
        "jobs/test.nomad.hcl:2: `update` in job \"x\" must be a block (`update { ... }`), not an attribute",
    );
    check_err(
        "job \"x\" {\n  type {}\n}",
        "jobs/test.nomad.hcl:2: `type` in job \"x\" is an attribute; write `type = ...`",
    );
    check_err(
        "job \"x\" {\n  group \"g\" {\n    task \"t\" {\n      resources {\n        cpu = \"lots\"\n      }\n    }\n  }\n}",
        "jobs/test.nomad.hcl:5: attribute `cpu` in `resources` block of task \"t\": expected a whole number, found string \"lots\"",
    );
    check_err(
        "job \"x\" {}\njob \"y\" {}\n",
        "jobs/test.nomad.hcl:2: duplicate `job` block; a jobspec holds exactly one job",
    );
    check_err("# nothing\n", "jobs/test.nomad.hcl:1: no `job` block found");
    check_err(
        "name = \"x\"\n",
        "jobs/test.nomad.hcl:1: unexpected top-level attribute `name`; a jobspec holds one `job` block and optional `variable`, `variables` and `locals` blocks",
    );
    check_err(
        "\n{\"Job\": {}}",
        "jobs/test.nomad.hcl:2: JSON jobspecs are not supported; give the HCL jobspec",
    );
}

#[test]
fn syntax_errors_carry_the_parser_line() {
    let e = err("job \"x\" {\n  type = \n  priority = 1\n}\n");
    assert_eq!(e.line(), Some(2));
    assert!(
        e.to_string()
            .starts_with("jobs/test.nomad.hcl:2: HCL syntax error: "),
        "{e}"
    );
    assert!(!e.to_string().contains('\n'));
}

// ------------------------------------------------------------------ robustness

const SEED: &str = r#"
variable "n" {
  default = 2
}
job "seed" {
  datacenters = ["dc1"]
  constraint {
    attribute = "${attr.kernel.name}"
    value     = "linux"
  }
  group "g" {
    count = var.n
    network {
      port "http" { to = 8080 }
    }
    task "t" {
      driver = "docker"
      config {
        image = "nginx"
        args  = ["-c", "${NOMAD_TASK_DIR}/x"]
      }
      template {
        data        = <<-EOF
          a = ${NOMAD_ALLOC_DIR}
        EOF
        destination = "local/x"
      }
      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
"#;

/// HCL-ish tokens for generating structurally plausible input.
const TOKENS: &[&str] = &[
    "job",
    "group",
    "task",
    "config",
    "resources",
    "template",
    "network",
    "port",
    "service",
    "check",
    "constraint",
    "variable",
    "locals",
    "meta",
    "env",
    "update",
    "periodic",
    "\"x\"",
    "\"${attr.k}\"",
    "\"$${x}\"",
    "\"%{if true}a%{endif}\"",
    "{",
    "}",
    "[",
    "]",
    "=",
    ",",
    "\n",
    " ",
    "1",
    "-2.5",
    "true",
    "null",
    "var.x",
    "local.y",
    "f(1)",
    "<<EOF\nx\nEOF\n",
    "<<-EOT\n  y\n  EOT\n",
    "\"30s\"",
    "?",
    ":",
    "+",
    "count",
    "cpu",
    "memory",
    "data",
    "destination",
    "static",
    "to",
    "cron",
    "#c\n",
    "a.b",
    "[0]",
];

#[test]
fn seed_parses() {
    assert_eq!(job(SEED)["TaskGroups"][0]["Count"], json!(2));
}

proptest! {
    // No failure persistence: a regression file would land outside this module.
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_input_never_panics(input in "[ -~\n\t{}\\[\\]\"$%<>=#]{0,200}") {
        let _ = parse_jobspec(&input, FILE);
    }

    #[test]
    fn random_token_soup_never_panics(tokens in proptest::collection::vec(proptest::sample::select(TOKENS.to_vec()), 0..60)) {
        let text = tokens.concat();
        match parse_jobspec(&text, FILE) {
            Ok(v) => prop_assert!(v.get("Job").is_some()),
            Err(e) => prop_assert!(e.line().is_some() && !e.to_string().contains('\n')),
        }
    }

    #[test]
    fn mutated_jobspecs_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..4, "[ -~\n{}\"$]{0,6}"), 1..6)
    ) {
        let mut text = SEED.to_string();
        for (at, op, insert) in edits {
            let mut pos = at.index(text.len() + 1);
            while !text.is_char_boundary(pos) {
                pos -= 1;
            }
            match op {
                0 => text.insert_str(pos, &insert),
                1 => {
                    let mut end = (pos + insert.len().max(1)).min(text.len());
                    while !text.is_char_boundary(end) {
                        end -= 1;
                    }
                    text.replace_range(pos..end, "");
                }
                2 => {
                    let mut end = (pos + insert.len()).min(text.len());
                    while !text.is_char_boundary(end) {
                        end -= 1;
                    }
                    text.replace_range(pos..end, &insert);
                }
                _ => text = text[pos..].to_string(),
            }
        }
        match parse_jobspec(&text, FILE) {
            Ok(v) => prop_assert!(v.get("Job").is_some()),
            Err(e) => prop_assert!(!e.to_string().contains('\n')),
        }
    }
}
