use super::*;

const VALID: &str = r#"
inputs = {
  cluster_name = "prod"
  datacenters  = ["dc1", "dc2"]
  agent_types = {
    coder = {
      image         = "ghcr.io/acme/coder:1"
      cpu_limit     = 2000
      memory_limit  = "2GB"
      max_instances = 5
      env_vars      = { LOG_LEVEL = "debug" }
      timeout       = "1h"
    }
  }
}
"#;

fn hcl(src: &str) -> Result<Inputs, InputError> {
    decode(src, Format::Hcl, "t.hcl")
}

/// Asserts that decoding fails with a line naming `path` (and `line` when given).
fn check_err(src: &str, format: Format, path: &str, line: Option<usize>, fragment: &str) {
    let err = decode(src, format, "in.hcl").expect_err("should be refused");
    let hit = err.errors.iter().find(|e| e.path == path);
    let Some(hit) = hit else {
        panic!("no error for `{path}` in: {err}")
    };
    assert!(
        hit.message.contains(fragment),
        "`{}` lacks `{fragment}`",
        hit.message
    );
    if line.is_some() {
        assert_eq!(hit.line, line, "line of {path}");
    }
    assert!(err.to_string().starts_with("in.hcl"), "{err}");
}

#[test]
fn valid_terragrunt_inputs_decode_with_defaults() {
    let inputs = hcl(VALID).unwrap();
    assert_eq!(inputs.cluster_name, "prod");
    assert_eq!(inputs.environment, "dev");
    assert_eq!(inputs.datacenters, vec!["dc1", "dc2"]);
    assert_eq!(inputs.agent_timeout, Duration::from_secs(1800));
    assert_eq!(inputs.coordinator_memory_limit_mb, 512);
    let coder = &inputs.agent_types["coder"];
    assert_eq!(coder.memory_limit_mb, 2048);
    assert_eq!(coder.cpu_limit, 2000);
    assert_eq!(coder.priority, 50);
    assert_eq!(coder.timeout, Some(Duration::from_secs(3600)));
    assert_eq!(coder.env_vars["LOG_LEVEL"], "debug");
    assert!(!inputs.nomad_supports_max_run_duration());
}

#[test]
fn tfvars_json_spelling_gives_the_same_inputs() {
    let json = r#"{"cluster_name": "prod", "datacenters": ["dc1", "dc2"], "agent_types": {"coder": {
        "image": "ghcr.io/acme/coder:1", "cpu_limit": 2000, "memory_limit": "2GB", "max_instances": 5,
        "env_vars": {"LOG_LEVEL": "debug"}, "timeout": "1h"}}}"#;
    assert_eq!(
        decode(json, Format::Json, "x.tfvars.json").unwrap(),
        hcl(VALID).unwrap()
    );
}

#[test]
fn bad_values_name_file_line_and_path() {
    let bad_size = VALID.replace("\"2GB\"", "\"2GX\"");
    check_err(
        &bad_size,
        Format::Hcl,
        "agent_types.coder.memory_limit",
        Some(9),
        "unknown size unit",
    );
    let zero = VALID.replace("max_instances = 5", "max_instances = 0");
    check_err(
        &zero,
        Format::Hcl,
        "agent_types.coder.max_instances",
        Some(10),
        "out of range",
    );
    let unknown = VALID.replace("timeout       = \"1h\"", "gpu = 1");
    check_err(
        &unknown,
        Format::Hcl,
        "agent_types.coder.gpu",
        Some(12),
        "unknown field",
    );
    let negative = VALID.replace("cpu_limit     = 2000", "cpu_limit = -5");
    check_err(
        &negative,
        Format::Hcl,
        "agent_types.coder.cpu_limit",
        Some(8),
        "out of range",
    );
    let missing = VALID.replace("image         = \"ghcr.io/acme/coder:1\"", "");
    check_err(
        &missing,
        Format::Hcl,
        "agent_types.coder.image",
        None,
        "required field",
    );
    check_err(
        "inputs = {\n  cluster_name = \"x\"\n  bad = = 1\n}\n",
        Format::Hcl,
        "",
        Some(3),
        "invalid HCL",
    );
}

#[test]
fn duplicate_agent_types_are_refused() {
    let json = r#"{"cluster_name": "c", "agent_types": {
        "a": {"image": "i", "cpu_limit": 1, "memory_limit": "64MB", "max_instances": 1},
        "a": {"image": "i", "cpu_limit": 1, "memory_limit": "64MB", "max_instances": 1}}}"#;
    check_err(
        json,
        Format::Json,
        "agent_types.a",
        None,
        "duplicate agent type",
    );
}

#[test]
fn unresolved_references_are_errors_only_where_needed() {
    let src = VALID.replace(
        "cluster_name = \"prod\"",
        "cluster_name = dependency.c.outputs.name",
    );
    check_err(
        &src,
        Format::Hcl,
        "cluster_name",
        Some(3),
        "dependency.c.outputs.name",
    );
    // Unresolved values elsewhere in the file (outside inputs) never matter.
    let with_blocks =
        format!("include \"root\" {{\n  path = find_in_parent_folders()\n}}\n{VALID}");
    assert!(hcl(&with_blocks).is_ok());
}

#[test]
fn reserved_and_invalid_env_names_are_refused() {
    let src = VALID.replace("LOG_LEVEL", "AO_TASK_ID");
    check_err(
        &src,
        Format::Hcl,
        "agent_types.coder.env_vars.AO_TASK_ID",
        Some(11),
        "reserved",
    );
    let src = VALID.replace("LOG_LEVEL", "\"1BAD\"");
    check_err(
        &src,
        Format::Hcl,
        "agent_types.coder.env_vars.1BAD",
        Some(11),
        "not a valid",
    );
}

#[test]
fn nomad_version_switches_max_run_duration() {
    let src = VALID.replace(
        "cluster_name = \"prod\"",
        "cluster_name = \"prod\"\n  nomad_version = \"2.0.3\"",
    );
    assert!(hcl(&src).unwrap().nomad_supports_max_run_duration());
    let src = VALID.replace(
        "cluster_name = \"prod\"",
        "cluster_name = \"prod\"\n  nomad_version = \"2.0.2\"",
    );
    assert!(!hcl(&src).unwrap().nomad_supports_max_run_duration());
}

#[test]
fn embedded_default_has_the_echo_type() {
    let inputs = Inputs::embedded_default();
    assert!(inputs.agent_types.contains_key("echo"));
}

#[test]
fn every_default_in_the_schema_decodes() {
    // A minimal document exercises every default through the same decoder as user values.
    let inputs = decode(
        r#"{"cluster_name": "c", "agent_types": {"a": {"image": "i", "cpu_limit": 1, "memory_limit": 64, "max_instances": 1}}}"#,
        Format::Json,
        "min.json",
    )
    .unwrap();
    assert_eq!(inputs.max_attempts, 3);
    assert_eq!(inputs.agent_types["a"].args, Vec::<String>::new());
}

/// `VALID` with `priority_queues = <tiers>` in the coder type (line 13).
fn with_tiers(tiers: &str) -> String {
    VALID.replace(
        "timeout       = \"1h\"",
        &format!("timeout       = \"1h\"\n      priority_queues = {tiers}"),
    )
}

#[test]
fn priority_queues_decode_sorted_highest_first_and_default_to_none() {
    assert!(hcl(VALID).unwrap().agent_types["coder"]
        .priority_queues
        .is_empty());
    let inputs = hcl(&with_tiers(
        "{ low = -5, urgent = 100, \"high-1\" = 10, b_0 = 0 }",
    ))
    .unwrap();
    let tiers: Vec<(&str, i64)> = inputs.agent_types["coder"]
        .priority_queues
        .iter()
        .map(|t| (t.name.as_str(), t.min_priority))
        .collect();
    assert_eq!(
        tiers,
        [("urgent", 100), ("high-1", 10), ("b_0", 0), ("low", -5)]
    );
}

#[test]
fn bad_priority_queues_name_the_tier_and_its_line() {
    let path = |tier: &str| format!("agent_types.coder.priority_queues.{tier}");
    for (tiers, tier, fragment) in [
        ("{ Urgent = 10 }", "Urgent", "lowercase"),
        ("{ \"a.b\" = 10 }", "a.b", "lowercase"),
        (
            "{ abcdefghijabcdefghijk = 10 }",
            "abcdefghijabcdefghijk",
            "1-20",
        ),
        ("{ urgent = 2.5 }", "urgent", "whole number"),
        ("{ urgent = 1001 }", "urgent", "from -1000 to 1000"),
        ("{ urgent = \"soon\" }", "urgent", "expected a number"),
        ("{ urgent = 10, high = 10 }", "high", "share the minimum 10"),
    ] {
        check_err(
            &with_tiers(tiers),
            Format::Hcl,
            &path(tier),
            Some(13),
            fragment,
        );
    }
    check_err(
        &with_tiers("[10]"),
        Format::Hcl,
        "agent_types.coder.priority_queues",
        Some(13),
        "expected an object",
    );
    let json = r#"{"cluster_name": "c", "agent_types": {"a": {"image": "i", "cpu_limit": 1,
        "memory_limit": "64MB", "max_instances": 1, "priority_queues": {"x": 1, "x": 2}}}}"#;
    check_err(
        json,
        Format::Json,
        "agent_types.a.priority_queues.x",
        None,
        "set twice",
    );
}

#[test]
fn a_tier_queue_name_must_fit_sqs() {
    // 40 + 1 + 26 + 6 ("-tasks") = 73 for the base queue; a tier of 7 makes it 81.
    let cluster = "abcdefghij-abcdefghij-abcdefghij-abcdefg";
    let src = with_tiers("{ abcdefg = 1, abcdef = 2 }")
        .replace("\"prod\"", &format!("\"{cluster}\""))
        .replace("coder = {", "abcdefghij-abcdefghij-abcd = {");
    check_err(
        &src,
        Format::Hcl,
        "agent_types.abcdefghij-abcdefghij-abcd.priority_queues.abcdefg",
        Some(13),
        "longer than SQS's 80",
    );
    let err = hcl(&src).unwrap_err();
    assert_eq!(err.errors.len(), 1, "the 80-character tier is fine: {err}");
    assert_eq!(
        tier_queue_name(
            &task_queue_name(cluster, "abcdefghij-abcdefghij-abcd"),
            "abcdef"
        )
        .len(),
        80
    );
}

#[test]
fn terraform_types_describe_the_agent_object() {
    let ty = Kind::AgentTypes.terraform_type();
    assert!(
        ty.starts_with("map(object({ image = string, cpu_limit = number"),
        "{ty}"
    );
    assert!(ty.contains("env_vars = optional(map(string), {})"), "{ty}");
    assert!(
        ty.contains("priority_queues = optional(map(number), {})"),
        "{ty}"
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(400))]
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = decode(&text, Format::Hcl, "fuzz.hcl");
        let _ = decode(&text, Format::Json, "fuzz.json");
    }

    #[test]
    fn mutated_valid_inputs_never_panic(pos in 0usize..400, byte in proptest::prelude::any::<u8>()) {
        let mut bytes = VALID.as_bytes().to_vec();
        let at = pos % bytes.len();
        bytes[at] = byte;
        let text = String::from_utf8_lossy(&bytes);
        let _ = decode(&text, Format::Hcl, "fuzz.hcl");
    }
}

#[test]
fn secrets_lose_surrounding_whitespace_and_an_empty_one_is_none() {
    assert_eq!(
        super::trimmed_secret(b"  s3cret\n"),
        Some(b"s3cret".to_vec())
    );
    assert_eq!(super::trimmed_secret(b" \n\t"), None);
    assert_eq!(super::trimmed_secret(b""), None);
}
