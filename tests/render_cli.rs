//! `render`, `parse` and `validate` through the real binary, in a temporary copy of the
//! repository's inputs and templates: what an operator (and CI) sees, exit codes included.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use agent_orchestrator::config::{self, Inputs};
use serde_json::Value;

const DEFAULT_INPUTS: &str = "terragrunt/live/dev/agent-orchestrator/terragrunt.hcl";
const TEMPLATES: [&str; 2] = ["coordinator.nomad.hcl.hbs", "agent.nomad.hcl.hbs"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What one run of the binary did.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn assert_ok(&self) -> &Run {
        assert_eq!(
            self.code,
            Some(0),
            "expected success\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    fn assert_fails(&self, code: i32, needles: &[&str]) -> &Run {
        assert_eq!(
            self.code,
            Some(code),
            "expected exit {code}\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        assert!(!self.stderr.contains("panicked"), "panic:\n{}", self.stderr);
        for needle in needles {
            assert!(
                self.stderr.contains(needle),
                "expected {needle:?} in stderr:\n{}",
                self.stderr
            );
        }
        self
    }
}

/// A temporary directory laid out like the repository: the default inputs and `templates/`.
struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new() -> Workspace {
        let dir = tempfile::tempdir().expect("temp dir");
        let ws = Workspace { dir };
        ws.write(DEFAULT_INPUTS, &read(&repo().join(DEFAULT_INPUTS)));
        for t in TEMPLATES {
            ws.write(
                &format!("templates/{t}"),
                &read(&repo().join("templates").join(t)),
            );
        }
        ws
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, contents: &str) {
        let path = self.path(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("mkdir");
        }
        fs::write(&path, contents).expect("write");
    }

    fn read(&self, rel: &str) -> String {
        read(&self.path(rel))
    }

    /// Replaces the first `from` in a file, which must contain it.
    fn edit(&self, rel: &str, from: &str, to: &str) {
        let text = self.read(rel);
        assert!(text.contains(from), "{rel} does not contain {from:?}");
        self.write(rel, &text.replacen(from, to, 1));
    }

    fn run(&self, args: &[&str]) -> Run {
        let output = Command::new(env!("CARGO_BIN_EXE_agent-orchestrator"))
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run agent-orchestrator");
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    fn parse(&self, rel: &str) -> Value {
        let run = self.run(&["parse", rel]);
        run.assert_ok();
        serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("parse {rel} printed no JSON ({e}):\n{}", run.stdout))
    }

    fn files(&self, rel: &str) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.path(rel))
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn default_inputs() -> Inputs {
    config::load_inputs(&repo().join(DEFAULT_INPUTS))
        .unwrap_or_else(|e| panic!("default inputs:\n{e}"))
}

fn expected_files(inputs: &Inputs, ext: &str) -> Vec<String> {
    let mut names: Vec<String> = inputs
        .agent_types
        .keys()
        .map(|t| format!("{t}-agent{ext}"))
        .collect();
    names.push(format!("coordinator{ext}"));
    names.sort();
    names
}

#[test]
fn render_writes_the_coordinator_and_one_job_per_agent_type() {
    let ws = Workspace::new();
    ws.run(&["render"]).assert_ok();
    let inputs = default_inputs();
    assert_eq!(ws.files("jobs"), expected_files(&inputs, ".nomad.hcl"));
    // Same bytes as the committed golden files.
    for name in ws.files("jobs") {
        assert_eq!(
            ws.read(&format!("jobs/{name}")),
            read(&repo().join("jobs").join(&name)),
            "{name}"
        );
    }
    // Rendering again changes nothing.
    let again = ws.run(&["render"]);
    again.assert_ok();
    assert!(again.stdout.contains("0 written"), "{}", again.stdout);
}

#[test]
fn check_passes_after_render_and_names_what_an_edit_changed() {
    let ws = Workspace::new();
    // Nothing rendered yet: every file is missing.
    ws.run(&["render", "--check"]).assert_fails(
        1,
        &[
            "jobs/coordinator.nomad.hcl: missing",
            "agent-orchestrator render",
        ],
    );
    assert!(!ws.path("jobs").exists(), "--check wrote something");

    ws.run(&["render"]).assert_ok();
    ws.run(&["render", "--check"]).assert_ok();

    // A template edit: every agent job differs, and so does the coordinator job, which
    // carries them.
    let template = "templates/agent.nomad.hcl.hbs";
    let original = ws.read(template);
    ws.edit(template, "kill_timeout = \"30s\"", "kill_timeout = \"45s\"");
    let run = ws.run(&["render", "--check"]);
    run.assert_fails(
        1,
        &[
            "jobs/coder-agent.nomad.hcl: differs",
            "jobs/tester-agent.nomad.hcl: differs",
            "jobs/coordinator.nomad.hcl: differs",
            "run `agent-orchestrator render`",
        ],
    );
    // The coordinator's own template edited: only the coordinator job differs.
    ws.write(template, &original);
    let coordinator_template = "templates/coordinator.nomad.hcl.hbs";
    let coordinator_original = ws.read(coordinator_template);
    ws.edit(
        coordinator_template,
        "kill_timeout = \"30s\"",
        "kill_timeout = \"40s\"",
    );
    let run = ws.run(&["render", "--check"]);
    run.assert_fails(1, &["jobs/coordinator.nomad.hcl: differs"]);
    assert!(!run.stderr.contains("-agent.nomad.hcl"), "{}", run.stderr);
    ws.write(coordinator_template, &coordinator_original);
    ws.write(template, &original);
    ws.run(&["render", "--check"]).assert_ok();

    // An input edit: the coder job (and the coordinator, which carries the inputs) differ.
    ws.edit(
        DEFAULT_INPUTS,
        "cpu_limit     = 2000",
        "cpu_limit     = 2100",
    );
    let run = ws.run(&["render", "--check"]);
    run.assert_fails(
        1,
        &[
            "jobs/coder-agent.nomad.hcl: differs",
            "jobs/coordinator.nomad.hcl: differs",
        ],
    );
    assert!(!run.stderr.contains("tester-agent"), "{}", run.stderr);

    // A job file no agent type produces any more is stale; render removes it.
    ws.run(&["render"]).assert_ok();
    ws.write("jobs/retired-agent.nomad.hcl", "job \"x\" {}\n");
    ws.run(&["render", "--check"])
        .assert_fails(1, &["jobs/retired-agent.nomad.hcl: stale"]);
    ws.run(&["render"]).assert_ok();
    assert!(!ws.path("jobs/retired-agent.nomad.hcl").exists());
    ws.run(&["render", "--check"]).assert_ok();

    // Non-default flags are repeated in the hint.
    ws.run(&["render", "--check", "--out", "elsewhere"])
        .assert_fails(1, &["agent-orchestrator render --out elsewhere"]);
}

#[test]
fn parse_of_every_rendered_job_carries_the_inputs() {
    let ws = Workspace::new();
    ws.run(&["render"]).assert_ok();
    let inputs = default_inputs();
    for (name, agent) in &inputs.agent_types {
        let json = ws.parse(&format!("jobs/{name}-agent.nomad.hcl"));
        let job = &json["Job"];
        assert_eq!(job["ID"], format!("{}-{name}-agent", inputs.cluster_name));
        assert_eq!(job["Type"], "batch");
        assert_eq!(job["Priority"], u64::from(agent.priority));
        assert_eq!(
            job["ParameterizedJob"]["MetaRequired"],
            serde_json::json!(["task_id"])
        );
        let task = &job["TaskGroups"][0]["Tasks"][0];
        assert_eq!(task["Config"]["image"], agent.image.as_str());
        assert_eq!(task["Resources"]["CPU"], agent.cpu_limit);
        assert_eq!(task["Resources"]["MemoryMB"], agent.memory_limit_mb);
        assert_eq!(task["DispatchPayload"]["File"], "task.json");
        for (key, value) in &agent.env_vars {
            assert_eq!(task["Env"][key], value.as_str(), "{name}: env {key}");
        }
        assert_eq!(task["Env"]["AO_TASK_ID"], "${NOMAD_META_task_id}");
        assert_eq!(task["Env"]["AO_AGENT_TYPE"], name.as_str());
        assert_eq!(job["Meta"]["capabilities"], agent.capabilities.join(","));
    }
    let json = ws.parse("jobs/coordinator.nomad.hcl");
    let job = &json["Job"];
    assert_eq!(
        job["ID"],
        format!("{}-agent-coordinator", inputs.cluster_name)
    );
    let task = &job["TaskGroups"][0]["Tasks"][0];
    assert_eq!(task["Config"]["image"], inputs.coordinator_image.as_str());
    assert_eq!(task["Resources"]["CPU"], inputs.coordinator_cpu_limit);
    assert_eq!(
        task["Resources"]["MemoryMB"],
        inputs.coordinator_memory_limit_mb
    );
}

const TRICKY: &str = r#"x ${attr.kernel.name} "q" %{if}"#;

fn tfvars(nomad_version: &str) -> String {
    serde_json::json!({
        "cluster_name": "edge",
        "nomad_version": nomad_version,
        "agent_types": {
            "coder": {"image": "img:1", "cpu_limit": 300, "memory_limit": "1GB", "max_instances": 1,
                      "timeout": "20m", "env_vars": {"TRICKY": TRICKY}}
        }
    })
    .to_string()
}

#[test]
fn an_env_value_with_interpolations_and_quotes_comes_back_byte_identical() {
    let ws = Workspace::new();
    ws.write("edge.tfvars.json", &tfvars("1.10.5"));
    ws.run(&["render", "--inputs", "edge.tfvars.json", "--out", "out"])
        .assert_ok();
    let json = ws.parse("out/coder-agent.nomad.hcl");
    assert_eq!(
        json["Job"]["TaskGroups"][0]["Tasks"][0]["Env"]["TRICKY"],
        TRICKY
    );
    ws.run(&["validate", "--inputs", "edge.tfvars.json"])
        .assert_ok();
}

#[test]
fn max_run_duration_is_rendered_only_for_nomad_2_0_3_and_later() {
    for (version, expected) in [
        ("2.0.2", None),
        ("2.0.3", Some(1_200_000_000_000_i64)),
        ("2.0.10", Some(1_200_000_000_000)),
    ] {
        let ws = Workspace::new();
        ws.write("edge.tfvars.json", &tfvars(version));
        ws.run(&["render", "--inputs", "edge.tfvars.json", "--out", "out"])
            .assert_ok();
        let hcl = ws.read("out/coder-agent.nomad.hcl");
        assert_eq!(
            hcl.contains("max_run_duration = \"20m\""),
            expected.is_some(),
            "nomad {version}:\n{hcl}"
        );
        let json = ws.parse("out/coder-agent.nomad.hcl");
        assert_eq!(
            json["Job"]["TaskGroups"][0]["MaxRunDuration"].as_i64(),
            expected,
            "nomad {version}"
        );
    }
}

#[test]
fn bad_inputs_exit_2_naming_file_line_and_field() {
    // (what, text in the default inputs, its replacement, field the error must name).
    let cases = [
        (
            "unknown field",
            "      cpu_limit     = 2000\n",
            "      colour        = \"red\"\n",
            "agent_types.coder.colour",
        ),
        (
            "bad size",
            "      memory_limit  = \"4GB\"\n",
            "      memory_limit  = \"2GX\"\n",
            "agent_types.coder.memory_limit",
        ),
        (
            "zero instances",
            "      max_instances = 5\n",
            "      max_instances = 0\n",
            "agent_types.coder.max_instances",
        ),
        (
            "malformed HCL",
            "      cpu_limit     = 2000\n",
            "      cpu_limit     = = 2000\n",
            "invalid HCL",
        ),
    ];
    let original = read(&repo().join(DEFAULT_INPUTS));
    for (what, from, to, field) in cases {
        let at = original
            .find(from)
            .unwrap_or_else(|| panic!("{what}: {from:?} not in the default inputs"));
        let line = original[..at].matches('\n').count() + 1;
        let ws = Workspace::new();
        ws.write(DEFAULT_INPUTS, &original.replacen(from, to, 1));
        let located = format!("{DEFAULT_INPUTS}:{line}: {field}");
        for command in [
            &["render"][..],
            &["validate"][..],
            &["render", "--check"][..],
        ] {
            ws.run(command).assert_fails(2, &[located.as_str()]);
        }
        assert!(
            !ws.path("jobs").exists(),
            "{what}: render wrote jobs from bad inputs"
        );
    }
}

#[test]
fn format_json_writes_nomad_api_json() {
    let ws = Workspace::new();
    ws.run(&["render", "--format", "json"]).assert_ok();
    let inputs = default_inputs();
    assert_eq!(ws.files("jobs"), expected_files(&inputs, ".json"));
    ws.run(&["render"]).assert_ok();
    for name in expected_files(&inputs, "") {
        let written: Value =
            serde_json::from_str(&ws.read(&format!("jobs/{name}.json"))).expect("JSON file");
        assert!(
            written["Job"].is_object(),
            "{name}.json has no top-level Job"
        );
        assert_eq!(
            written,
            ws.parse(&format!("jobs/{name}.nomad.hcl")),
            "{name}: JSON differs from parse of the HCL"
        );
    }
    ws.run(&["render", "--format", "json", "--check"])
        .assert_ok();
    ws.run(&["render", "--check"]).assert_ok();
}

#[test]
fn parse_errors_name_the_file() {
    let ws = Workspace::new();
    ws.run(&["parse", "nope.nomad.hcl"])
        .assert_fails(1, &["nope.nomad.hcl"]);
    ws.write(
        "bad.nomad.hcl",
        "job \"x\" {\n  group \"g\" {\n    count = \n  }\n}\n",
    );
    let run = ws.run(&["parse", "bad.nomad.hcl"]);
    run.assert_fails(2, &["bad.nomad.hcl:"]);
    assert_eq!(
        run.stderr.trim_end().lines().count(),
        1,
        "one located line:\n{}",
        run.stderr
    );
    assert!(run.stdout.is_empty());
}

#[test]
fn validate_reports_ok_and_template_problems() {
    let ws = Workspace::new();
    let run = ws.run(&["validate"]);
    run.assert_ok();
    assert_eq!(
        run.stdout.trim(),
        format!("ok: {} jobs", default_inputs().agent_types.len() + 1)
    );

    // A template that renders an undispatchable job: named with file, template and field.
    ws.edit(
        "templates/agent.nomad.hcl.hbs",
        "meta_required = [\"task_id\"]",
        "meta_required = [\"job\"]",
    );
    ws.run(&["validate"]).assert_fails(
        1,
        &[
            "coder-agent.nomad.hcl: Job.ParameterizedJob.MetaRequired",
            "rendered from templates/agent.nomad.hcl.hbs",
        ],
    );
    ws.run(&["render"]).assert_fails(
        1,
        &["jobs/coder-agent.nomad.hcl: Job.ParameterizedJob.MetaRequired"],
    );
    assert!(
        !ws.path("jobs").exists(),
        "render wrote jobs that fail their checks"
    );

    // A template with a handlebars error, and a missing one.
    ws.write(
        "templates/agent.nomad.hcl.hbs",
        "job {{hcl job_id}} {\n  {{#if x}}\n}\n",
    );
    ws.run(&["validate"])
        .assert_fails(1, &["templates/agent.nomad.hcl.hbs:", "broken template"]);
    ws.run(&["validate", "--templates", "nowhere"])
        .assert_fails(
            1,
            &["nowhere/coordinator.nomad.hcl.hbs: cannot read template"],
        );
}

/// Real-world `terragrunt.hcl` files (fixtures) are never a crash: the inputs loader answers
/// Ok or errors that each name a field or a line.
#[test]
fn terragrunt_fixtures_load_or_fail_naming_a_field() {
    let root = repo().join("../shared/fixtures/terragrunt");
    if !root.is_dir() {
        println!("skipped: {} is absent", root.display());
        return;
    }
    let mut files = Vec::new();
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).expect("read fixtures").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n == "terragrunt.hcl") {
                files.push(path);
            }
        }
    }
    assert!(!files.is_empty(), "no terragrunt.hcl fixtures found");
    for path in files {
        let result = std::panic::catch_unwind(|| config::load_inputs(&path));
        match result {
            Err(_) => panic!("load_inputs panicked on {}", path.display()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                assert!(!e.errors.is_empty(), "{}: empty error", path.display());
                let message = e.to_string();
                assert!(
                    e.errors.iter().any(|f| !f.path.is_empty()),
                    "{}: no error names a field:\n{message}",
                    path.display()
                );
                assert!(
                    message.starts_with(&path.display().to_string()),
                    "{message}"
                );
            }
        }
    }
}

/// `parse … | head` ends `parse` quietly by SIGPIPE, like any Unix tool: no panic on the
/// broken pipe.
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    // Far more JSON than a pipe buffers (64 KiB).
    let groups: String = (0..2000)
        .map(|i| {
            format!(
                "group \"g{i}\" {{\n task \"t\" {{\n driver = \"docker\"\n config {{ image = \"x\" }}\n }}\n}}\n"
            )
        })
        .collect();
    let jobspec = dir.path().join("big.nomad.hcl");
    fs::write(
        &jobspec,
        format!("job \"big\" {{\n datacenters = [\"dc1\"]\n type = \"batch\"\n{groups}}}\n"),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_agent-orchestrator"))
        .arg("parse")
        .arg(&jobspec)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    // The reader is gone now (dropped above).
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.signal(), Some(libc::SIGPIPE), "{stderr}");
}
