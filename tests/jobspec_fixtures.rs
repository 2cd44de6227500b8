//! The jobspec parser against Nomad's own published samples, read at test time from
//! `../shared/fixtures` (see its PROVENANCE.md); skipped with a message when absent.
//!
//! 1. `nomad-api/jobs/parse.request.json` holds a jobspec and `parse.response.json` Nomad's
//!    parse output: every field both set must agree.
//! 2. Every file in `nomad-jobspecs/` parses, or fails with the located error the table
//!    below expects.
//! 3. `json-jobs/example-job.example.json` (the `nomad job init` job), the `fragment-*`
//!    samples and `jobs/register.request.json` against equivalent jobspecs: same key names at
//!    the same nesting, and equal values wherever both set.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use agent_orchestrator::jobspec::parse_jobspec;
use serde_json::Value;

fn fixtures() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("skipping: fixture folder {} is absent", dir.display());
        None
    }
}

fn read_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn parse_job(hcl: &str, name: &str) -> Value {
    match parse_jobspec(hcl, name) {
        Ok(v) => v["Job"].clone(),
        Err(e) => panic!("{name}: {e}"),
    }
}

// ------------------------------------------------------------------ comparator

/// What comparing two JSON documents found.
#[derive(Default, Debug)]
struct Comparison {
    /// Scalar leaves set (non-null) on both sides.
    compared: usize,
    /// Paths where both sides are set but disagree (value or JSON type).
    mismatches: BTreeSet<String>,
    /// Paths of keys we emit inside an object the sample has, but which the sample lacks.
    unknown_keys: BTreeSet<String>,
    /// Paths of keys the sample sets (non-null) that we do not emit.
    missing_keys: BTreeSet<String>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Recursively compares the fields both `ours` and `theirs` set; `null` counts as unset.
fn compare(ours: &Value, theirs: &Value, path: &str, out: &mut Comparison) {
    match (ours, theirs) {
        (Value::Null, _) | (_, Value::Null) => {}
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                match b.get(key) {
                    Some(other) => compare(value, other, &join(path, key), out),
                    None => {
                        out.unknown_keys.insert(join(path, key));
                    }
                }
            }
            for (key, value) in b {
                if !value.is_null() && !a.contains_key(key) {
                    out.missing_keys.insert(join(path, key));
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            if a.len() != b.len() {
                out.mismatches
                    .insert(format!("{path} (length {} vs {})", a.len(), b.len()));
            }
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                compare(x, y, &format!("{path}[{i}]"), out);
            }
        }
        (a, b) if a.is_object() || a.is_array() || b.is_object() || b.is_array() => {
            out.mismatches.insert(format!("{path} (type)"));
        }
        (a, b) => {
            out.compared += 1;
            if a != b {
                out.mismatches.insert(path.to_string());
            }
        }
    }
}

fn comparison(ours: &Value, theirs: &Value) -> Comparison {
    let mut out = Comparison::default();
    compare(ours, theirs, "", &mut out);
    out
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn comparator_reports_mismatching_paths() {
    let ours = serde_json::json!({"A": 1, "B": {"C": [1, 2]}, "D": "x", "E": null, "F": 1});
    let theirs = serde_json::json!({"A": 1, "B": {"C": [1, 3]}, "D": null, "E": 5, "G": 2});
    let c = comparison(&ours, &theirs);
    assert_eq!(c.compared, 3);
    assert_eq!(c.mismatches, set(&["B.C[1]"]));
    assert_eq!(c.unknown_keys, set(&["F"]));
    assert_eq!(c.missing_keys, set(&["G"]));
}

// ------------------------------------------------------------------ 1. parse endpoint sample

#[test]
fn parse_request_agrees_with_parse_response() {
    let Some(dir) = fixtures() else { return };
    let request = read_json(&dir.join("nomad-api/jobs/parse.request.json"));
    let response = read_json(&dir.join("nomad-api/jobs/parse.response.json"));
    let hcl = request["JobHCL"].as_str().expect("JobHCL is a string");
    let ours = parse_job(hcl, "parse.request.json");
    let c = comparison(&ours, &response);
    // Doc quirk: the documented response is for a job called "my-job" (with NodePool
    // "prod"), not the request's `job "example"`, so only ID and Name can disagree.
    assert_eq!(c.mismatches, set(&["ID", "Name"]), "{c:?}");
    assert!(c.compared >= 3, "too little compared: {c:?}");
    assert_eq!(ours["Type"], response["Type"]);
    // Every key we emit is a key of Nomad's Job.
    assert!(c.unknown_keys.is_empty(), "{c:?}");
}

// ------------------------------------------------------------------ 2. every jobspec fixture

enum Expect {
    /// Parses; the text says what the file exercises.
    Ok(&'static str),
    /// Fails with a located error containing this text (a deliberately unsupported block).
    /// No current fixture needs it: every block they use is supported.
    #[allow(dead_code)]
    Err(&'static str),
}

/// Every file in nomad-jobspecs/, with the outcome and why.
const JOBSPECS: &[(&str, Expect)] = &[
    (
        "asset-example-short.nomad.hcl",
        Expect::Ok("docker task, network port, identity"),
    ),
    (
        "asset-example.nomad.hcl",
        Expect::Ok("nomad job init: update, migrate, ui, service, restart, ephemeral_disk"),
    ),
    (
        "demo-snapshot-agent-periodic.nomad.hcl",
        Expect::Ok("periodic crons, env block"),
    ),
    (
        "docs-check-http-grpc.nomad.hcl",
        Expect::Ok("group service with tcp check"),
    ),
    (
        "docs-dispatch-payload.nomad.hcl",
        Expect::Ok("dispatch_payload; doc snippet without driver"),
    ),
    (
        "docs-identity-vault-template.nomad.hcl",
        Expect::Ok("vault {}, named identity, template"),
    ),
    (
        "docs-job-all-blocks.nomad.hcl",
        Expect::Ok("empty placeholder blocks are valid"),
    ),
    (
        "docs-job-batch-exec-uptime.nomad.hcl",
        Expect::Ok("batch exec"),
    ),
    (
        "docs-job-docker-service.nomad.hcl",
        Expect::Ok("docker with resources"),
    ),
    (
        "docs-job-vault-secrets-template.nomad.hcl",
        Expect::Ok("vault policies, template"),
    ),
    (
        "docs-parameterized-email-blast.nomad.hcl",
        Expect::Ok("parameterized, runtime ${NOMAD_META_*}"),
    ),
    (
        "docs-parameterized-video-encode.nomad.hcl",
        Expect::Ok("parameterized payload + dispatch_payload"),
    ),
    (
        "docs-service-check-driver-address.nomad.hcl",
        Expect::Ok("task-level service and check"),
    ),
    (
        "e2e-consul-on-update-check-restart.nomad.hcl",
        Expect::Ok("script check with check_restart, on_update"),
    ),
    (
        "e2e-docker-auth-basic.nomad.hcl",
        Expect::Ok("variables with defaults; unused local with a function call"),
    ),
    (
        "e2e-exec2-secrets.nomad.hcl",
        Expect::Ok("lifecycle, identity"),
    ),
    (
        "e2e-lifecycle-batch.nomad.hcl",
        Expect::Ok("lifecycle hooks, heredoc templates with ${...}"),
    ),
    (
        "e2e-parameterized-simple.nomad.hcl",
        Expect::Ok("parameterized meta_optional"),
    ),
    ("e2e-periodic-simple.nomad.hcl", Expect::Ok("periodic cron")),
    (
        "e2e-register-volumes-parameterized.nomad.hcl",
        Expect::Ok("heredocs with indented terminators"),
    ),
    (
        "e2e-sysbatch-dispatch-parameterized.nomad.hcl",
        Expect::Ok("sysbatch parameterized"),
    ),
    (
        "e2e-sysbatch-periodic.nomad.hcl",
        Expect::Ok("sysbatch periodic"),
    ),
    (
        "e2e-vaultcompat-cat-jwt.nomad.hcl",
        Expect::Ok("group vault inherited by tasks, reschedule"),
    ),
    (
        "e2e-vaultsecrets-default-wi.nomad.hcl",
        Expect::Ok("vault {} with env template"),
    ),
    (
        "e2e-workload-id-identity.nomad.hcl",
        Expect::Ok("identity variants"),
    ),
    (
        "enos-raw-exec-batch.nomad.hcl",
        Expect::Ok("count = var.alloc_count"),
    ),
    (
        "enos-writes-vars.nomad.hcl",
        Expect::Ok("script check, check_restart"),
    ),
    (
        "jobspec-fixture-parameterized-job.nomad.hcl",
        Expect::Ok("parameterized + dispatch_payload"),
    ),
    (
        "jobspec-fixture-periodic-cron.nomad.hcl",
        Expect::Ok("periodic with time_zone, no groups"),
    ),
];

#[test]
fn every_jobspec_fixture_parses_or_fails_as_expected() {
    let Some(dir) = fixtures() else { return };
    let dir = dir.join("nomad-jobspecs");
    let on_disk: BTreeSet<String> = fs::read_dir(&dir)
        .expect("nomad-jobspecs is readable")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".hcl"))
        .collect();
    let listed: BTreeSet<String> = JOBSPECS.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(
        on_disk, listed,
        "every fixture must be listed in JOBSPECS with its expected outcome"
    );

    for (name, expect) in JOBSPECS {
        let source = fs::read_to_string(dir.join(name)).expect("fixture is readable");
        let label = job_label(&source);
        match (parse_jobspec(&source, name), expect) {
            (Ok(out), Expect::Ok(_)) => {
                let job = &out["Job"];
                assert_eq!(job["ID"], Value::String(label.clone()), "{name}");
                assert_eq!(job["Name"], Value::String(label), "{name}");
                assert_no_internal_keys(job, name);
            }
            (Err(e), Expect::Err(want)) => {
                assert!(e.to_string().contains(want), "{name}: {e}");
                assert!(e.line().is_some(), "{name}: error has no line: {e}");
            }
            (Ok(_), Expect::Err(want)) => panic!("{name}: expected an error containing {want:?}"),
            (Err(e), Expect::Ok(why)) => panic!("{name} ({why}) failed: {e}"),
        }
    }
}

/// The label of the file's `job "..."` block.
fn job_label(source: &str) -> String {
    let line = source
        .lines()
        .find(|l| l.starts_with("job \""))
        .expect("fixture has a job block");
    line.split('"').nth(1).unwrap_or_default().to_string()
}

fn assert_no_internal_keys(value: &Value, name: &str) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                assert!(!k.starts_with('_'), "{name}: internal key {k} leaked");
                assert_no_internal_keys(v, name);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| assert_no_internal_keys(v, name)),
        _ => {}
    }
}

#[test]
fn fixture_values_spot_checks() {
    let Some(dir) = fixtures() else { return };
    let job = |name: &str| {
        let source = fs::read_to_string(dir.join("nomad-jobspecs").join(name)).expect("readable");
        parse_job(&source, name)
    };
    let raw = job("enos-raw-exec-batch.nomad.hcl");
    assert_eq!(raw["TaskGroups"][0]["Count"], 1);
    assert_eq!(
        raw["TaskGroups"][0]["Tasks"][0]["Config"]["args"][2],
        "${NOMAD_PORT_server}"
    );
    let auth = job("e2e-docker-auth-basic.nomad.hcl");
    assert_eq!(
        auth["TaskGroups"][0]["Tasks"][0]["Config"]["image"],
        "localhost:7511/docker.io/library/bash_auth_basic:private"
    );
    assert_eq!(
        auth["TaskGroups"][0]["Tasks"][0]["Config"]["auth"],
        serde_json::json!([{"password": "auth_basic_pass", "username": "auth_basic_user"}])
    );
    let cron = job("jobspec-fixture-periodic-cron.nomad.hcl");
    assert_eq!(
        cron["Periodic"],
        serde_json::json!({"Spec": "*/5 * * *", "SpecType": "cron", "ProhibitOverlap": true, "TimeZone": "Europe/Minsk"})
    );
    let snapshot = job("demo-snapshot-agent-periodic.nomad.hcl");
    assert_eq!(
        snapshot["Periodic"]["Specs"],
        serde_json::json!(["*/5 * * * *"])
    );
    let lifecycle = job("e2e-lifecycle-batch.nomad.hcl");
    let tmpl = lifecycle["TaskGroups"][0]["Tasks"][0]["Templates"][0]["EmbeddedTmpl"]
        .as_str()
        .unwrap_or_default();
    assert!(
        tmpl.starts_with("#!/bin/sh\nsleep 1\ntouch ${NOMAD_ALLOC_DIR}/init-ran\n"),
        "{tmpl}"
    );
    let volumes = job("e2e-register-volumes-parameterized.nomad.hcl");
    let tmpl = volumes["TaskGroups"][0]["Tasks"][0]["Templates"][1]["EmbeddedTmpl"]
        .as_str()
        .unwrap_or_default();
    assert!(
        tmpl.starts_with("name      = \"VOL_NAME\"\n") && tmpl.ends_with("}\n"),
        "{tmpl:?}"
    );
    let params = job("jobspec-fixture-parameterized-job.nomad.hcl");
    assert_eq!(
        params["ParameterizedJob"],
        serde_json::json!({"Payload": "required", "MetaRequired": ["foo", "bar"], "MetaOptional": ["baz", "bam"]})
    );
    assert_eq!(
        params["TaskGroups"][0]["Tasks"][0]["DispatchPayload"],
        serde_json::json!({"File": "foo/bar"})
    );
}

#[test]
fn unsupported_block_in_a_real_fixture_is_located() {
    let Some(dir) = fixtures() else { return };
    let name = "asset-example-short.nomad.hcl";
    let source = fs::read_to_string(dir.join("nomad-jobspecs").join(name)).expect("readable");
    let line = source
        .lines()
        .position(|l| l.contains("driver = \"docker\""))
        .expect("fixture has a driver line")
        + 1;
    let edited = source.replacen("driver = \"docker\"", "csi_plugin {\n id = \"x\"\n }", 1);
    let e = parse_jobspec(&edited, name).expect_err("csi_plugin is deliberately unsupported");
    assert_eq!(
        e.to_string(),
        format!("{name}:{line}: unsupported block `csi_plugin` in task \"redis\"")
    );
}

// ------------------------------------------------------------------ 3. documented JSON jobs

#[test]
fn init_job_matches_documented_example_job() {
    let Some(dir) = fixtures() else { return };
    let sample = read_json(&dir.join("nomad-api/json-jobs/example-job.example.json"));
    let sample = &sample["Job"];

    // The documented JSON is an older rendering of `nomad job init`'s job.
    let full =
        fs::read_to_string(dir.join("nomad-jobspecs/asset-example.nomad.hcl")).expect("readable");
    let c = comparison(&parse_job(&full, "asset-example"), sample);
    // The template changed since: datacenters ["dc1"] → ["*"], shutdown_delay 0 → "10s".
    assert_eq!(
        c.mismatches,
        set(&["Datacenters[0]", "TaskGroups[0].Tasks[0].ShutdownDelay"]),
        "{c:?}"
    );
    assert!(c.compared >= 35, "too little compared: {c:?}");
    // Fields the sample predates (ui block, Nomad 1.7 identities) are the only new keys.
    assert_eq!(
        c.unknown_keys,
        set(&["Ui", "TaskGroups[0].Tasks[0].Identities"]),
        "{c:?}"
    );

    let short = fs::read_to_string(dir.join("nomad-jobspecs/asset-example-short.nomad.hcl"))
        .expect("readable");
    let c = comparison(&parse_job(&short, "asset-example-short"), sample);
    assert!(c.mismatches.is_empty(), "{c:?}");
    assert_eq!(
        c.unknown_keys,
        set(&["TaskGroups[0].Tasks[0].Identities"]),
        "{c:?}"
    );
    assert!(c.compared >= 12, "too little compared: {c:?}");
}

#[test]
fn register_request_sample_round_trips() {
    let Some(dir) = fixtures() else { return };
    let sample = read_json(&dir.join("nomad-api/jobs/register.request.json"));
    let hcl = r#"
job "cache" {
  datacenters = ["dc1"]
  node_pool   = "prod"
  group "cache" {
    network {
      port "db" {
        to = 6379
      }
    }
    service {
      name = "redis-cache"
      port = "db"
    }
    task "redis" {
      driver = "docker"
      config {
        image = "redis:7"
        ports = ["db"]
      }
    }
  }
}"#;
    let c = comparison(&parse_job(hcl, "register"), &sample["Job"]);
    assert!(c.mismatches.is_empty(), "{c:?}");
    assert!(c.missing_keys.is_empty(), "{c:?}");
    // Nomad's parser also sets Name from the label; the sample omits it.
    assert_eq!(c.unknown_keys, set(&["Name"]), "{c:?}");
    assert_eq!(c.compared, 12, "{c:?}");
}

/// Each documented fragment, and a jobspec snippet producing the same values; `Place` says
/// where the snippet goes and which part of the output the fragment describes.
const FRAGMENTS: &[(&str, &str, Place)] = &[
    (
        "fragment-artifact-2.example.json",
        r#"artifact {
  source = "https://example.com/my.zip"
  options {
    checksum = "md5:7f4b3e3b4dd5150d4e5aaaa5efada4c3"
  }
}"#,
        Place::Task,
    ),
    (
        "fragment-artifact-s3-1.example.json",
        r#"artifact { source = "https://my-bucket-example.s3-us-west-2.amazonaws.com/my_app.tar.gz" }"#,
        Place::Task,
    ),
    (
        "fragment-artifact-s3-2.example.json",
        r#"artifact { source = "s3::https://my-bucket-example.s3-eu-west-1.amazonaws.com/my_app.tar.gz" }"#,
        Place::Task,
    ),
    (
        "fragment-artifact-s3-3.example.json",
        r#"artifact { source = "my-bucket-example.s3-eu-west-1.amazonaws.com/my_app.tar.gz" }"#,
        Place::Task,
    ),
    (
        "fragment-artifact.example.json",
        r#"artifact {
  options {
    checksum              = "md5:c4aa853ad2215426eb7d70a21922e794"
    aws_access_key_id     = "<id>"
    aws_access_key_secret = "<secret>"
    aws_access_token      = "<token>"
  }
}"#,
        Place::Artifact,
    ),
    (
        "fragment-job-ui.example.json",
        r#"ui {
  description = "A job that uses **Nomad Variables** to modify its output"
  link {
    label = "Learn more about Nomad Variables"
    url   = "https://developer.hashicorp.com/nomad/docs/concepts/variables"
  }
  link {
    label = "See this job on Github"
    url   = "https://github.com/hashicorp/nomad/blob/main/ui/app/utils/default_jobs/variables.js"
  }
}"#,
        Place::Job,
    ),
    (
        "fragment-logrotation.example.json",
        "logs {\n  disabled = false\n  max_files = 3\n  max_file_size = 10\n}",
        Place::Task,
    ),
    (
        "fragment-periodic.example.json",
        r#"periodic {
  cron             = "*/15 - *"
  time_zone        = "Europe/Berlin"
  enabled          = true
  prohibit_overlap = true
}"#,
        Place::Job,
    ),
    (
        "fragment-task-env.example.json",
        "env {\n  NODE_CLASS = \"${nomad.class}\"\n}",
        Place::Task,
    ),
    (
        "fragment-template.example.json",
        r#"template {
  source        = "local/config.conf.tpl"
  destination   = "local/config.conf"
  data          = ""
  change_mode   = "signal"
  change_signal = "SIGUSR1"
  splay         = "5s"
}"#,
        Place::Task,
    ),
    (
        "fragment-update.example.json",
        r#"update {
  max_parallel     = 3
  health_check     = "checks"
  min_healthy_time = "15s"
  healthy_deadline = "3m"
  auto_revert      = false
  auto_promote     = false
  canary           = 1
}"#,
        Place::Job,
    ),
];

#[derive(Clone, Copy)]
enum Place {
    Job,
    Task,
    /// The fragment is the inside of one artifact.
    Artifact,
}

#[test]
fn documented_fragments_match_equivalent_jobspecs() {
    let Some(dir) = fixtures() else { return };
    let on_disk: BTreeSet<String> = fs::read_dir(dir.join("nomad-api/json-jobs"))
        .expect("json-jobs is readable")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("fragment-"))
        .collect();
    let listed: BTreeSet<String> = FRAGMENTS.iter().map(|(n, _, _)| n.to_string()).collect();
    assert_eq!(on_disk, listed, "every fragment must be covered");

    for (name, snippet, place) in FRAGMENTS {
        let sample = read_json(&dir.join("nomad-api/json-jobs").join(name));
        let hcl = match place {
            Place::Job => format!("job \"j\" {{\n{snippet}\n}}"),
            Place::Task | Place::Artifact => {
                format!("job \"j\" {{\n group \"g\" {{\n  task \"t\" {{\n{snippet}\n  }}\n }}\n}}")
            }
        };
        let job = parse_job(&hcl, name);
        let ours = match place {
            Place::Job => job,
            Place::Task => job["TaskGroups"][0]["Tasks"][0].clone(),
            Place::Artifact => job["TaskGroups"][0]["Tasks"][0]["Artifacts"][0].clone(),
        };
        let c = comparison(&ours, &sample);
        assert!(c.mismatches.is_empty(), "{name}: {c:?}");
        assert!(
            c.missing_keys.is_empty(),
            "{name}: sample keys we do not produce: {c:?}"
        );
        assert!(c.compared >= 1, "{name}: nothing compared");
    }
}
