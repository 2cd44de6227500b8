//! The Terragrunt module (`terragrunt/modules/agent-orchestrator`) against the generator's input
//! schema and its own promises: variables mirror `INPUT_FIELDS`, IAM statements stay on the
//! module's own queues and table, every file parses, the README documents everything, the dev
//! example validates, and — where `terraform` is installed — `fmt` and `terraform test` pass.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use agent_orchestrator::config::units::{parse_duration, parse_size_mb};
use agent_orchestrator::config::{
    load_inputs, Default, FieldSpec, Kind, AGENT_TYPE_FIELDS, INPUT_FIELDS,
};
use hcl::eval::{Context, Evaluate};
use hcl::expr::{Operation, TemplateExpr, TraversalOperator};
use hcl::template::{Directive, Element};
use hcl::{Block, Body, Expression, ObjectKey, Template};

// ---------------------------------------------------------------------------------------------
// Paths and parsing helpers

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn terragrunt_dir() -> PathBuf {
    repo().join("terragrunt")
}

fn module_dir() -> PathBuf {
    terragrunt_dir().join("modules/agent-orchestrator")
}

fn live_inputs() -> PathBuf {
    terragrunt_dir().join("live/dev/agent-orchestrator/terragrunt.hcl")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn parse_file(path: &Path) -> Body {
    hcl::parse(&read(path)).unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()))
}

/// The module's own `.tf` files (not the submodule's), parsed.
fn module_bodies() -> Vec<(PathBuf, Body)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(module_dir())
        .expect("terragrunt/modules/agent-orchestrator exists")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "tf"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the module has no .tf files");
    files
        .into_iter()
        .map(|p| (p.clone(), parse_file(&p)))
        .collect()
}

fn blocks<'a>(body: &'a Body, identifier: &'a str) -> impl Iterator<Item = &'a Block> + 'a {
    body.blocks()
        .filter(move |b| b.identifier.as_str() == identifier)
}

fn label(block: &Block, i: usize) -> &str {
    block.labels.get(i).map(|l| l.as_str()).unwrap_or("")
}

fn attr<'a>(body: &'a Body, key: &str) -> Option<&'a Expression> {
    body.attributes()
        .find(|a| a.key.as_str() == key)
        .map(|a| &a.expr)
}

/// An expression printed on one line (for messages and for simple text checks).
fn text(expr: &Expression) -> String {
    let printed = hcl::format::to_string(expr).unwrap_or_else(|e| format!("<unprintable: {e}>"));
    printed.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Every `*.tf`/`*.hcl` file under `dir`, skipping Terraform's and Terragrunt's working dirs.
fn hcl_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        {
            let path = entry.expect("directory entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if path.is_dir() {
                if name != ".terraform" && name != ".terragrunt-cache" {
                    stack.push(path);
                }
            } else if name.ends_with(".tf") || name.ends_with(".hcl") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------------
// 1. variables.tf mirrors the generator's schema

struct Variable {
    name: String,
    ty: Option<Expression>,
    default: Option<Expression>,
    description: Option<String>,
}

fn variables(text: &str) -> Result<Vec<Variable>, String> {
    let body = hcl::parse(text).map_err(|e| e.to_string())?;
    Ok(blocks(&body, "variable")
        .map(|b| Variable {
            name: label(b, 0).to_string(),
            ty: attr(&b.body, "type").cloned(),
            default: attr(&b.body, "default").cloned(),
            description: match attr(&b.body, "description") {
                Some(Expression::String(s)) => Some(s.clone()),
                _ => None,
            },
        })
        .collect())
}

/// A type constraint in a comparable form: parentheses dropped, object attributes sorted
/// (their order means nothing to Terraform), whitespace and commas gone with the parse.
fn normalize_type(expr: &Expression) -> Expression {
    match expr {
        Expression::Parenthesis(inner) => normalize_type(inner),
        Expression::FuncCall(call) => {
            let mut call = call.clone();
            call.args = call.args.iter().map(normalize_type).collect();
            Expression::FuncCall(call)
        }
        Expression::Array(items) => Expression::Array(items.iter().map(normalize_type).collect()),
        Expression::Object(object) => {
            let mut entries: Vec<(ObjectKey, Expression)> = object
                .iter()
                .map(|(k, v)| (k.clone(), normalize_type(v)))
                .collect();
            entries.sort_by_key(|(k, _)| k.to_string());
            Expression::Object(entries.into_iter().collect())
        }
        other => other.clone(),
    }
}

fn json_of(expr: &Expression) -> Result<serde_json::Value, String> {
    let value = expr.evaluate(&Context::new()).map_err(|e| e.to_string())?;
    serde_json::to_value(value).map_err(|e| e.to_string())
}

fn default_mismatch(field: &FieldSpec, default: Option<&Expression>) -> Option<String> {
    let name = field.name;
    match (field.default, default) {
        (Default::Required, None) => None,
        (Default::Required, Some(d)) => {
            Some(format!("variable `{name}`: the schema requires it, but variables.tf gives `default = {}`", text(d)))
        }
        (Default::Null, Some(Expression::Null)) => None,
        (Default::Null, other) => Some(format!(
            "variable `{name}`: the schema's default is null, variables.tf has {}",
            other.map_or("no default (required)".to_string(), |d| format!("`default = {}`", text(d)))
        )),
        (Default::Json(v), None) => {
            Some(format!("variable `{name}`: the schema's default is {v}, variables.tf has no default (required)"))
        }
        (Default::Json(v), Some(d)) => {
            let want: serde_json::Value = serde_json::from_str(v).expect("schema defaults are JSON");
            match json_of(d) {
                Ok(got) if got == want => None,
                Ok(got) => Some(format!("variable `{name}`: default {got} in variables.tf, {want} in the schema")),
                Err(e) => Some(format!("variable `{name}`: default `{}` is not a literal value: {e}", text(d))),
            }
        }
    }
}

/// Every difference between a `variables.tf` and the generator's `INPUT_FIELDS`: variables the
/// schema lacks, fields without a variable, and differing types, defaults or descriptions.
fn schema_mismatches(variables_tf: &str) -> Vec<String> {
    let vars = match variables(variables_tf) {
        Ok(vars) => vars,
        Err(e) => return vec![format!("variables.tf does not parse: {e}")],
    };
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for var in &vars {
        if !seen.insert(var.name.as_str()) {
            problems.push(format!("variable `{}` is declared twice", var.name));
        }
        if !INPUT_FIELDS.iter().any(|f| f.name == var.name) {
            problems.push(format!(
                "variable `{}` is not a field of the generator's schema (INPUT_FIELDS)",
                var.name
            ));
        }
    }
    for field in INPUT_FIELDS {
        let Some(var) = vars.iter().find(|v| v.name == field.name) else {
            problems.push(format!(
                "field `{}` of INPUT_FIELDS has no variable in variables.tf",
                field.name
            ));
            continue;
        };
        let want_text = field.kind.terraform_type();
        let want: Expression = want_text
            .parse()
            .expect("Kind::terraform_type() is an HCL expression");
        match &var.ty {
            None => problems.push(format!(
                "variable `{}` has no type (schema: {want_text})",
                field.name
            )),
            Some(ty) if normalize_type(ty) != normalize_type(&want) => problems.push(format!(
                "variable `{}`: type `{}` in variables.tf, `{want_text}` in the schema",
                field.name,
                text(ty)
            )),
            Some(_) => {}
        }
        problems.extend(default_mismatch(field, var.default.as_ref()));
        if var.description.as_deref() != Some(field.description) {
            problems.push(format!(
                "variable `{}`: description {:?} in variables.tf, {:?} in the schema",
                field.name, var.description, field.description
            ));
        }
    }
    problems
}

fn variables_tf() -> String {
    read(&module_dir().join("variables.tf"))
}

#[test]
fn variables_mirror_the_generators_schema() {
    let problems = schema_mismatches(&variables_tf());
    assert!(
        problems.is_empty(),
        "variables.tf differs from INPUT_FIELDS:\n{}",
        problems.join("\n")
    );
}

#[test]
fn a_variable_added_to_the_module_only_is_reported_by_name() {
    let extra = "\nvariable \"queue_kms_key_arn\" {\n  description = \"KMS key.\"\n  type        = string\n  default     = null\n}\n";
    let problems = schema_mismatches(&format!("{}{extra}", variables_tf()));
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(problems[0].contains("`queue_kms_key_arn`"), "{problems:#?}");
}

#[test]
fn a_field_missing_from_the_module_is_reported_by_name() {
    let text = variables_tf();
    let body = hcl::parse(&text).expect("variables.tf parses");
    // Drop the last declared variable from the body, as if someone forgot to add it.
    let removed = blocks(&body, "variable")
        .last()
        .map(|b| label(b, 0).to_string())
        .expect("variables");
    let kept: Body = body
        .into_iter()
        .filter(|s| !matches!(s.as_block(), Some(b) if b.identifier.as_str() == "variable" && label(b, 0) == removed))
        .collect();
    let problems = schema_mismatches(&hcl::format::to_string(&kept).expect("formats"));
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(
        problems[0].contains(&format!("`{removed}`")),
        "{problems:#?}"
    );
}

#[test]
fn a_changed_type_or_default_is_reported() {
    let text = variables_tf();
    let changed = text.replacen("default     = 500", "default     = 400", 1);
    assert_ne!(
        changed, text,
        "coordinator_cpu_limit's default is written `default     = 500`"
    );
    let problems = schema_mismatches(&changed);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("`coordinator_cpu_limit`") && p.contains("400")),
        "{problems:#?}"
    );

    // Only the agent type's priority has this type and default (alignment is terraform fmt's).
    let changed = text.replacen("optional(number, 50)", "optional(string, \"50\")", 1);
    assert_ne!(
        changed, text,
        "the agent type's priority is declared `optional(number, 50)`"
    );
    let problems = schema_mismatches(&changed);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("`agent_types`") && p.contains("type")),
        "{problems:#?}"
    );
}

#[test]
fn the_naming_submodule_validates_the_same_variables() {
    let copy = read(&module_dir().join("naming/variables.tf"));
    assert!(
        copy == variables_tf(),
        "naming/variables.tf must be an exact copy of variables.tf (cp variables.tf naming/)"
    );

    // ... and the module hands every input to it unchanged, so its validation and names see them.
    let bodies = module_bodies();
    let naming = bodies
        .iter()
        .flat_map(|(_, body)| blocks(body, "module"))
        .find(|b| label(b, 0) == "naming")
        .expect("module \"naming\" is called");
    let vars = variables(&variables_tf()).expect("variables.tf parses");
    for var in &vars {
        let passed = attr(&naming.body, &var.name).map(text);
        assert_eq!(
            passed.as_deref(),
            Some(format!("var.{}", var.name).as_str()),
            "module.naming gets {}",
            var.name
        );
    }
    assert_eq!(
        naming.body.attributes().count(),
        vars.len() + 1,
        "module.naming gets the inputs and its source only"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. IAM: statements on SQS/DynamoDB stay on the module's own queues and table

/// What one expression refers to: `aws_sqs_queue.task`, `var.x`, ... (first two parts), and
/// the literal text pieces it contains.
struct Refs {
    addresses: BTreeSet<String>,
    literals: Vec<String>,
}

struct Scope<'a> {
    locals: &'a BTreeMap<String, Expression>,
    /// `each` -> the block's for_each, `statement` -> the dynamic block's for_each.
    iterators: BTreeMap<String, Expression>,
}

fn collect_refs(
    expr: &Expression,
    scope: &Scope,
    bound: &BTreeSet<String>,
    refs: &mut Refs,
    depth: usize,
) {
    assert!(depth < 64, "reference cycle while expanding {}", text(expr));
    let mut walk =
        |e: &Expression, bound: &BTreeSet<String>| collect_refs(e, scope, bound, refs, depth + 1);
    match expr {
        Expression::String(s) => refs.literals.push(s.clone()),
        Expression::TemplateExpr(template) => {
            let parsed = Template::from_expr(template)
                .unwrap_or_else(|e| panic!("bad template {template}: {e}"));
            collect_template(&parsed, scope, bound, refs, depth);
        }
        Expression::Variable(v) => {
            let name = v.as_str().to_string();
            if !bound.contains(&name) {
                refs.addresses.insert(name);
            }
        }
        Expression::Traversal(t) => {
            let root = match &t.expr {
                Expression::Variable(v) => v.as_str().to_string(),
                other => {
                    walk(other, bound);
                    String::new()
                }
            };
            let first = t.operators.first().and_then(|op| match op {
                TraversalOperator::GetAttr(id) => Some(id.as_str().to_string()),
                _ => None,
            });
            for op in &t.operators {
                if let TraversalOperator::Index(index) = op {
                    walk(index, bound);
                }
            }
            if root.is_empty() || bound.contains(&root) {
                return;
            }
            match (root.as_str(), first) {
                ("local", Some(name)) => {
                    let local = scope
                        .locals
                        .get(&name)
                        .unwrap_or_else(|| panic!("local.{name} is not defined"));
                    walk(local, &BTreeSet::new());
                }
                (iterator, _) if scope.iterators.contains_key(iterator) => {
                    walk(&scope.iterators[iterator], bound)
                }
                (root, Some(name)) => {
                    refs.addresses.insert(format!("{root}.{name}"));
                }
                (root, None) => {
                    refs.addresses.insert(root.to_string());
                }
            }
        }
        Expression::Array(items) => items.iter().for_each(|e| walk(e, bound)),
        Expression::Object(object) => object.values().for_each(|e| walk(e, bound)),
        Expression::FuncCall(call) => call.args.iter().for_each(|e| walk(e, bound)),
        Expression::Parenthesis(inner) => walk(inner, bound),
        Expression::Conditional(c) => {
            walk(&c.cond_expr, bound);
            walk(&c.true_expr, bound);
            walk(&c.false_expr, bound);
        }
        Expression::Operation(op) => match op.as_ref() {
            Operation::Unary(u) => walk(&u.expr, bound),
            Operation::Binary(b) => {
                walk(&b.lhs_expr, bound);
                walk(&b.rhs_expr, bound);
            }
        },
        Expression::ForExpr(f) => {
            walk(&f.collection_expr, bound);
            let mut inner = bound.clone();
            inner.insert(f.value_var.as_str().to_string());
            if let Some(k) = &f.key_var {
                inner.insert(k.as_str().to_string());
            }
            for e in [
                Some(&f.value_expr),
                f.key_expr.as_ref(),
                f.cond_expr.as_ref(),
            ]
            .into_iter()
            .flatten()
            {
                walk(e, &inner);
            }
        }
        Expression::Null | Expression::Bool(_) | Expression::Number(_) => {}
        // `Expression` is non-exhaustive; a new kind of expression must be handled here.
        other => panic!("unexpected expression {}", text(other)),
    }
}

fn collect_template(
    template: &Template,
    scope: &Scope,
    bound: &BTreeSet<String>,
    refs: &mut Refs,
    depth: usize,
) {
    for element in template.elements() {
        match element {
            Element::Literal(s) => refs.literals.push(s.clone()),
            Element::Interpolation(i) => collect_refs(&i.expr, scope, bound, refs, depth + 1),
            Element::Directive(d) => match d.as_ref() {
                Directive::If(i) => {
                    collect_refs(&i.cond_expr, scope, bound, refs, depth + 1);
                    collect_template(&i.true_template, scope, bound, refs, depth + 1);
                    if let Some(f) = &i.false_template {
                        collect_template(f, scope, bound, refs, depth + 1);
                    }
                }
                Directive::For(f) => {
                    collect_refs(&f.collection_expr, scope, bound, refs, depth + 1);
                    let mut inner = bound.clone();
                    inner.insert(f.value_var.as_str().to_string());
                    if let Some(k) = &f.key_var {
                        inner.insert(k.as_str().to_string());
                    }
                    collect_template(&f.template, scope, &inner, refs, depth + 1);
                }
            },
        }
    }
}

struct Statement {
    document: String,
    sid: String,
    effect: String,
    actions: Vec<String>,
    resources: Option<Expression>,
    iterators: BTreeMap<String, Expression>,
}

fn string_list(expr: &Expression, what: &str) -> Vec<String> {
    match expr {
        Expression::Array(items) => items
            .iter()
            .map(|i| match i {
                Expression::String(s) => s.clone(),
                other => panic!("{what} must be literal strings, found {}", text(other)),
            })
            .collect(),
        other => panic!("{what} must be a literal list, found {}", text(other)),
    }
}

fn statement(document: &str, body: &Body, iterators: BTreeMap<String, Expression>) -> Statement {
    let sid = match attr(body, "sid") {
        Some(Expression::String(s)) => s.clone(),
        _ => String::from("<no sid>"),
    };
    let effect = match attr(body, "effect") {
        Some(Expression::String(s)) => s.clone(),
        None => "Allow".to_string(),
        Some(other) => panic!(
            "{document}/{sid}: effect must be a literal, found {}",
            text(other)
        ),
    };
    assert!(
        attr(body, "not_actions").is_none(),
        "{document}/{sid}: not_actions grants everything else"
    );
    assert!(
        attr(body, "not_resources").is_none(),
        "{document}/{sid}: not_resources grants everything else"
    );
    let actions = attr(body, "actions")
        .map(|e| string_list(e, "actions"))
        .unwrap_or_default();
    Statement {
        document: document.to_string(),
        sid,
        effect,
        actions,
        resources: attr(body, "resources").cloned(),
        iterators,
    }
}

struct Module {
    locals: BTreeMap<String, Expression>,
    /// `type.name` of every managed resource.
    resources: BTreeMap<String, Body>,
    statements: Vec<Statement>,
}

fn module() -> Module {
    let bodies = module_bodies();
    let mut locals = BTreeMap::new();
    let mut resources = BTreeMap::new();
    let mut statements = Vec::new();
    for (path, body) in &bodies {
        for block in blocks(body, "locals") {
            for a in block.body.attributes() {
                let previous = locals.insert(a.key.to_string(), a.expr.clone());
                assert!(
                    previous.is_none(),
                    "local.{} is defined twice ({})",
                    a.key,
                    path.display()
                );
            }
        }
        for block in blocks(body, "resource") {
            resources.insert(
                format!("{}.{}", label(block, 0), label(block, 1)),
                block.body.clone(),
            );
        }
        for doc in blocks(body, "data").filter(|b| label(b, 0) == "aws_iam_policy_document") {
            let name = label(doc, 1).to_string();
            let mut iterators = BTreeMap::new();
            if let Some(for_each) = attr(&doc.body, "for_each") {
                iterators.insert("each".to_string(), for_each.clone());
            }
            for s in blocks(&doc.body, "statement") {
                statements.push(statement(&name, &s.body, iterators.clone()));
            }
            for dynamic in blocks(&doc.body, "dynamic").filter(|b| label(b, 0) == "statement") {
                let mut iterators = iterators.clone();
                let for_each =
                    attr(&dynamic.body, "for_each").expect("dynamic blocks have for_each");
                iterators.insert("statement".to_string(), for_each.clone());
                let content = blocks(&dynamic.body, "content")
                    .next()
                    .expect("dynamic statement has content");
                statements.push(statement(&name, &content.body, iterators));
            }
        }
    }
    Module {
        locals,
        resources,
        statements,
    }
}

const ALLOWED_ACTIONS: &[&str] = &[
    "sqs:SendMessage",
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:GetQueueAttributes",
    "sqs:GetQueueUrl",
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:Query",
    "dynamodb:DeleteItem",
    "secretsmanager:GetSecretValue",
    "sts:AssumeRole",
];

fn resource_refs(module: &Module, s: &Statement, expr: &Expression) -> Refs {
    let scope = Scope {
        locals: &module.locals,
        iterators: s.iterators.clone(),
    };
    let mut refs = Refs {
        addresses: BTreeSet::new(),
        literals: Vec::new(),
    };
    collect_refs(expr, &scope, &BTreeSet::new(), &mut refs, 0);
    refs
}

#[test]
fn iam_statements_on_queues_and_tables_name_the_modules_own_resources() {
    let module = module();
    let mut checked = BTreeSet::new();
    for s in &module.statements {
        let id = format!("data.aws_iam_policy_document.{}/{}", s.document, s.sid);
        if let Some(resources) = &s.resources {
            let refs = resource_refs(&module, s, resources);
            assert!(
                !refs.literals.iter().any(|l| l.contains('*')),
                "{id}: a resource contains `*`: {}",
                text(resources)
            );
        }
        for (service, resource_type) in [
            ("sqs:", "aws_sqs_queue."),
            ("dynamodb:", "aws_dynamodb_table."),
        ] {
            if !s.actions.iter().any(|a| a.starts_with(service)) {
                continue;
            }
            let resources = s
                .resources
                .as_ref()
                .unwrap_or_else(|| panic!("{id}: {service}* actions without resources"));
            let refs = resource_refs(&module, s, resources);
            let own: BTreeSet<&String> = refs
                .addresses
                .iter()
                .filter(|a| module.resources.contains_key(*a))
                .collect();
            assert!(
                own.iter().any(|a| a.starts_with(resource_type)),
                "{id}: {service}* actions must be on this module's {resource_type}* resources, found {}",
                text(resources)
            );
            for address in &refs.addresses {
                let ours = module.resources.contains_key(address)
                    && (address.starts_with("aws_sqs_queue.")
                        || address.starts_with("aws_dynamodb_table."));
                assert!(ours, "{id}: resource refers to `{address}`, not to one of this module's queues or tables");
            }
            checked.insert(service);
        }
    }
    assert_eq!(
        checked.len(),
        2,
        "policy statements on both SQS and DynamoDB were found and checked"
    );
}

#[test]
fn iam_grants_only_the_actions_the_design_names() {
    let module = module();
    for s in module.statements.iter().filter(|s| s.effect == "Allow") {
        for action in &s.actions {
            assert!(
                ALLOWED_ACTIONS.contains(&action.as_str()),
                "{}/{}: `{action}` is not needed",
                s.document,
                s.sid
            );
        }
    }
    // Deny statements may be broad in actions, never in resources (checked above).
    assert!(module
        .statements
        .iter()
        .all(|s| s.effect == "Allow" || s.effect == "Deny"));
}

#[test]
fn agents_may_only_send_to_the_result_queue() {
    let module = module();
    let result_queues: Vec<&String> = module
        .resources
        .iter()
        .filter(|(address, body)| {
            address.starts_with("aws_sqs_queue.")
                && attr(body, "name").is_some_and(|n| text(n).contains("result_queue_name"))
        })
        .map(|(address, _)| address)
        .collect();
    assert_eq!(
        result_queues.len(),
        1,
        "one queue is named after module.naming.result_queue_name"
    );
    let agent: Vec<&Statement> = module
        .statements
        .iter()
        .filter(|s| s.document == "agent")
        .collect();
    assert!(
        !agent.is_empty(),
        "data.aws_iam_policy_document.agent exists"
    );
    for s in agent {
        assert_eq!(s.effect, "Allow");
        assert_eq!(s.actions, ["sqs:SendMessage"], "agent/{}", s.sid);
        let refs = resource_refs(&module, s, s.resources.as_ref().expect("resources"));
        assert_eq!(
            refs.addresses.iter().collect::<Vec<_>>(),
            result_queues,
            "agent/{}",
            s.sid
        );
    }
}

#[test]
fn the_coordinator_may_use_every_queue_of_the_module() {
    let module = module();
    let queues: BTreeSet<&String> = module
        .resources
        .keys()
        .filter(|address| address.starts_with("aws_sqs_queue."))
        .collect();
    let granted: BTreeSet<String> = module
        .statements
        .iter()
        .filter(|s| s.document == "coordinator" && s.actions.iter().any(|a| a.starts_with("sqs:")))
        .flat_map(|s| resource_refs(&module, s, s.resources.as_ref().expect("resources")).addresses)
        .collect();
    assert_eq!(
        granted.iter().collect::<BTreeSet<_>>(),
        queues,
        "the coordinator's SQS statements name every queue (task and tier queues, DLQ, results)"
    );
}

#[test]
fn the_secret_is_granted_only_when_set_and_only_that_one() {
    let module = module();
    let secret: Vec<&Statement> = module
        .statements
        .iter()
        .filter(|s| s.actions.iter().any(|a| a.starts_with("secretsmanager:")))
        .collect();
    assert_eq!(secret.len(), 1, "one statement grants secretsmanager");
    let s = secret[0];
    let for_each = s
        .iterators
        .get("statement")
        .expect("the secret statement is a dynamic block (conditional)");
    let for_each = text(for_each);
    assert!(
        for_each.contains("var.github_private_key_secret_arn == null ? []"),
        "conditional on the ARN: {for_each}"
    );
    let refs = resource_refs(&module, s, s.resources.as_ref().expect("resources"));
    assert_eq!(
        refs.addresses,
        BTreeSet::from(["var.github_private_key_secret_arn".to_string()])
    );
}

// ---------------------------------------------------------------------------------------------
// 3. The AWS resources as the design describes them

fn resource<'m>(module: &'m Module, address: &str) -> &'m Body {
    module
        .resources
        .get(address)
        .unwrap_or_else(|| panic!("resource {address} exists"))
}

fn literal<'b>(body: &'b Body, key: &str) -> &'b str {
    match attr(body, key) {
        Some(Expression::String(s)) => s,
        Some(Expression::Bool(true)) => "true",
        Some(Expression::Bool(false)) => "false",
        other => panic!("`{key}` should be a literal, found {:?}", other.map(text)),
    }
}

#[test]
fn queues_are_encrypted_and_task_queues_redrive_to_the_dlq() {
    let module = module();
    let queues: Vec<(&String, &Body)> = module
        .resources
        .iter()
        .filter(|(a, _)| a.starts_with("aws_sqs_queue."))
        .collect();
    assert_eq!(
        queues.len(),
        4,
        "task queues and priority tier queues (for_each), the DLQ and the result queue"
    );
    for (address, body) in &queues {
        assert_eq!(
            literal(body, "sqs_managed_sse_enabled"),
            "true",
            "{address} is encrypted"
        );
    }
    for (address, names, what) in [
        (
            "aws_sqs_queue.task",
            "task_queue_names",
            "one task queue per agent type",
        ),
        (
            "aws_sqs_queue.priority",
            "priority_queue_names",
            "one queue per priority tier",
        ),
    ] {
        let queue = resource(&module, address);
        assert!(
            attr(queue, "for_each").is_some_and(|e| text(e).contains(names)),
            "{what}"
        );
        let redrive =
            text(attr(queue, "redrive_policy").expect("task queues have a redrive policy"));
        assert!(
            redrive.contains("deadLetterTargetArn = aws_sqs_queue.dlq.arn")
                && redrive.contains("maxReceiveCount"),
            "{address}: {redrive}"
        );
    }
    let queues_local = text(module.locals.get("queues").expect("local.queues"));
    assert!(
        queues_local.contains("aws_sqs_queue.priority"),
        "tier queues get the TLS-only policy too: {queues_local}"
    );
    let dlq = text(attr(resource(&module, "aws_sqs_queue.dlq"), "name").expect("name"));
    assert_eq!(dlq, "module.naming.dlq_name");
}

#[test]
fn the_task_table_has_its_keys_indexes_ttl_and_backups() {
    let module = module();
    let table = resource(&module, "aws_dynamodb_table.tasks");
    assert_eq!(literal(table, "billing_mode"), "PAY_PER_REQUEST");
    assert_eq!(literal(table, "hash_key"), "id");
    let attributes: BTreeMap<&str, &str> = blocks(table, "attribute")
        .map(|b| (literal(&b.body, "name"), literal(&b.body, "type")))
        .collect();
    assert_eq!(
        attributes,
        BTreeMap::from([
            ("id", "S"),
            ("status", "S"),
            ("agent_type", "S"),
            ("updated_at", "N")
        ])
    );
    let indexes: BTreeMap<&str, (&str, &str)> = blocks(table, "global_secondary_index")
        .map(|b| {
            (
                literal(&b.body, "name"),
                (literal(&b.body, "hash_key"), literal(&b.body, "range_key")),
            )
        })
        .collect();
    assert_eq!(
        indexes,
        BTreeMap::from([
            ("status-index", ("status", "updated_at")),
            ("status-id-index", ("status", "id")),
            ("agent-type-index", ("agent_type", "id"))
        ])
    );
    let pitr = blocks(table, "point_in_time_recovery")
        .next()
        .expect("point_in_time_recovery");
    assert_eq!(literal(&pitr.body, "enabled"), "true");
    let ttl = blocks(table, "ttl").next().expect("ttl");
    assert_eq!(
        (
            literal(&ttl.body, "attribute_name"),
            literal(&ttl.body, "enabled")
        ),
        ("expires_at", "true")
    );
}

/// `a/b/../c` -> `a/c`, without touching the file system.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[test]
fn job_file_outputs_point_at_the_repositorys_jobs_directory() {
    let module = module();
    let jobs_dir = module.locals.get("jobs_dir").expect("local.jobs_dir");
    let Expression::TemplateExpr(template) = jobs_dir else {
        panic!("jobs_dir is a template: {}", text(jobs_dir))
    };
    let TemplateExpr::QuotedString(template) = template.as_ref() else {
        panic!("jobs_dir is a quoted string")
    };
    let resolved = template.replace("${path.module}", &module_dir().display().to_string());
    assert!(
        !resolved.contains("${"),
        "jobs_dir depends only on path.module: {template}"
    );
    // `render` writes to jobs/ at the repository's top (DESIGN.md §3, its default --out).
    assert_eq!(lexical(Path::new(&resolved)), lexical(&repo().join("jobs")));

    let outputs = parse_file(&module_dir().join("outputs.tf"));
    let output = |name: &str| {
        let block = blocks(&outputs, "output")
            .find(|b| label(b, 0) == name)
            .unwrap_or_else(|| panic!("output {name}"));
        text(attr(&block.body, "value").expect("value"))
    };
    assert_eq!(output("coordinator_job_file"), "local.coordinator_job_file");
    assert_eq!(output("agent_job_files"), "local.agent_job_files");
    let coordinator = text(&module.locals["coordinator_job_file"]);
    assert!(
        coordinator.contains("local.jobs_dir") && coordinator.contains("coordinator_job_file_name"),
        "{coordinator}"
    );
    let agents = text(&module.locals["agent_job_files"]);
    assert!(
        agents.contains("local.jobs_dir") && agents.contains("agent_job_file_names"),
        "{agents}"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Every file parses; the live units fit together

#[test]
fn every_tf_and_hcl_file_under_terragrunt_parses() {
    let files = hcl_files(&terragrunt_dir());
    let failures: Vec<String> = files
        .iter()
        .filter_map(|p| {
            hcl::parse(&read(p))
                .err()
                .map(|e| format!("{}: {e}", p.display()))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    for expected in [
        "root.hcl",
        "live/dev/vpc/terragrunt.hcl",
        "live/dev/nomad-cluster/terragrunt.hcl",
    ] {
        assert!(
            files.contains(&terragrunt_dir().join(expected)),
            "terragrunt/{expected} exists"
        );
    }
    assert!(
        files
            .iter()
            .filter(|p| p.extension().is_some_and(|x| x == "tf"))
            .count()
            >= 6,
        "the module's files were found"
    );
}

#[test]
fn live_units_include_root_and_depend_on_existing_units() {
    let root = parse_file(&terragrunt_dir().join("root.hcl"));
    let remote_state = blocks(&root, "remote_state")
        .next()
        .expect("root.hcl configures remote_state");
    assert_eq!(literal(&remote_state.body, "backend"), "s3");
    assert!(
        blocks(&root, "generate").any(|b| label(b, 0) == "provider"),
        "root.hcl generates the provider"
    );
    assert!(
        attr(&root, "inputs").is_none(),
        "root.hcl sets no inputs: the generator would not see them"
    );

    let live = terragrunt_dir().join("live/dev");
    let units: Vec<PathBuf> = hcl_files(&live)
        .into_iter()
        .filter(|p| p.ends_with("terragrunt.hcl"))
        .collect();
    assert!(
        units.len() >= 3,
        "vpc, nomad-cluster and agent-orchestrator units"
    );
    for unit in &units {
        let body = parse_file(unit);
        let include = blocks(&body, "include").find(|b| label(b, 0) == "root");
        let include = include.unwrap_or_else(|| panic!("{} has include \"root\"", unit.display()));
        assert_eq!(
            text(attr(&include.body, "path").expect("path")),
            "find_in_parent_folders(\"root.hcl\")"
        );
        assert!(
            blocks(&body, "terraform").next().is_some(),
            "{} names its module",
            unit.display()
        );
        for dependency in blocks(&body, "dependency") {
            let Some(Expression::String(path)) = attr(&dependency.body, "config_path") else {
                panic!("{}: dependency config_path is a literal", unit.display())
            };
            let target = unit
                .parent()
                .expect("unit dir")
                .join(path)
                .join("terragrunt.hcl");
            assert!(
                target.is_file(),
                "{}: dependency {path} exists",
                unit.display()
            );
        }
    }
}

#[test]
fn the_live_example_inputs_validate() {
    let inputs = load_inputs(&live_inputs()).unwrap_or_else(|e| panic!("{e}"));
    let types: Vec<&str> = inputs.agent_types.keys().map(String::as_str).collect();
    assert_eq!(types, ["coder", "docs", "reviewer", "tester"]);
    assert_eq!(inputs.cluster_name, "dev");
}

// ---------------------------------------------------------------------------------------------
// 5. The README documents every variable, field and output, and the example's values

fn readme() -> String {
    read(&module_dir().join("README.md"))
}

/// The markdown tables of a section (between `heading` and the next heading of the same or a
/// higher level), each as rows of trimmed cells, header and separator rows dropped.
fn tables(readme: &str, heading: &str) -> Vec<Vec<Vec<String>>> {
    let level = heading.chars().take_while(|c| *c == '#').count();
    let start = readme
        .find(&format!("\n{heading}"))
        .unwrap_or_else(|| panic!("README has `{heading}`"));
    let mut tables: Vec<Vec<Vec<String>>> = Vec::new();
    let mut in_table = false;
    for line in readme[start + 1..].lines().skip(1) {
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if hashes > 0 && hashes <= level && line[hashes..].starts_with(' ') {
            break;
        }
        if !line.starts_with('|') {
            in_table = false;
            continue;
        }
        if !in_table {
            tables.push(Vec::new());
            in_table = true;
            continue; // header row
        }
        let cells: Vec<String> = line
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_string())
            .collect();
        if cells
            .iter()
            .all(|c| c.chars().all(|ch| ch == '-' || ch == ':'))
        {
            continue;
        }
        tables.last_mut().expect("a table").push(cells);
    }
    tables
}

fn rows_by_name(table: &[Vec<String>]) -> BTreeMap<String, Vec<String>> {
    table
        .iter()
        .map(|row| (row[0].trim_matches('`').to_string(), row.clone()))
        .collect()
}

fn check_field_rows(rows: &BTreeMap<String, Vec<String>>, fields: &[FieldSpec], what: &str) {
    let names: BTreeSet<&str> = rows.keys().map(String::as_str).collect();
    let want: BTreeSet<&str> = fields.iter().map(|f| f.name).collect();
    assert_eq!(
        names, want,
        "README's {what} table lists exactly the schema's fields"
    );
    for field in fields {
        let row = &rows[field.name];
        let default = match field.default {
            Default::Required => "required".to_string(),
            Default::Null => "`null`".to_string(),
            Default::Json(v) => format!("`{v}`"),
        };
        assert_eq!(row[2], default, "README: default of `{}`", field.name);
        if field.kind != Kind::AgentTypes {
            assert_eq!(
                row[1],
                format!("`{}`", field.kind.terraform_type()),
                "README: type of `{}`",
                field.name
            );
        }
        assert!(
            row[3].starts_with(field.description),
            "README: description of `{}`: {}",
            field.name,
            row[3]
        );
    }
}

#[test]
fn the_readme_documents_every_variable_and_agent_type_field() {
    let readme = readme();
    let vars = variables(&variables_tf()).expect("variables.tf parses");
    for var in &vars {
        assert!(
            readme.contains(&format!("`{}`", var.name)),
            "README documents variable `{}`",
            var.name
        );
    }
    let tables = tables(&readme, "## Inputs");
    assert_eq!(
        tables.len(),
        2,
        "README's Inputs: the variables and the agent type fields"
    );
    check_field_rows(&rows_by_name(&tables[0]), INPUT_FIELDS, "variables");
    check_field_rows(
        &rows_by_name(&tables[1]),
        AGENT_TYPE_FIELDS,
        "agent type fields",
    );
}

#[test]
fn the_readme_documents_every_output() {
    let readme = readme();
    let outputs = parse_file(&module_dir().join("outputs.tf"));
    let names: BTreeSet<String> = blocks(&outputs, "output")
        .map(|b| label(b, 0).to_string())
        .collect();
    for required in [
        "task_queue_urls",
        "result_queue_url",
        "dlq_url",
        "task_table_name",
        "coordinator_job_file",
        "agent_job_files",
    ] {
        assert!(names.contains(required), "outputs.tf has `{required}`");
    }
    assert!(
        names.iter().filter(|n| n.ends_with("_role_arn")).count() >= 2,
        "role ARN outputs"
    );
    for name in &names {
        assert!(
            readme.contains(&format!("`{name}`")),
            "README documents output `{name}`"
        );
    }
    let tables = tables(&readme, "## Outputs");
    let documented: BTreeSet<String> = rows_by_name(&tables[0]).into_keys().collect();
    assert_eq!(
        documented, names,
        "README's Outputs table lists exactly the outputs"
    );
}

#[test]
fn the_readmes_example_table_matches_the_live_inputs() {
    let inputs = load_inputs(&live_inputs()).unwrap_or_else(|e| panic!("{e}"));
    let tables = tables(&readme(), "### The example agent types (dev)");
    let rows = rows_by_name(&tables[0]);
    assert_eq!(
        rows.keys().collect::<Vec<_>>(),
        inputs.agent_types.keys().collect::<Vec<_>>()
    );
    for (name, agent) in &inputs.agent_types {
        let row = &rows[name];
        assert_eq!(row[1].trim_matches('`'), agent.image, "{name}: image");
        assert_eq!(
            row[2].parse::<u64>().ok(),
            Some(agent.cpu_limit),
            "{name}: cpu_limit"
        );
        assert_eq!(
            parse_size_mb(&row[3]).ok(),
            Some(agent.memory_limit_mb),
            "{name}: memory_limit"
        );
        assert_eq!(
            row[4].parse::<u32>().ok(),
            Some(agent.max_instances),
            "{name}: max_instances"
        );
        let timeout = row[5].split_whitespace().next().unwrap_or("");
        assert_eq!(
            parse_duration(timeout).ok(),
            Some(agent.effective_timeout(inputs.agent_timeout)),
            "{name}: timeout"
        );
        assert_eq!(
            row[6],
            agent.capabilities.join(", "),
            "{name}: capabilities"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Terraform itself, where it is installed

fn terraform() -> Option<Command> {
    let found = Command::new("terraform")
        .arg("version")
        .env("TF_CLI_CONFIG_FILE", "/dev/null")
        .env("CHECKPOINT_DISABLE", "1")
        .output();
    if !found.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: `terraform` is not on PATH");
        return None;
    }
    let mut cmd = Command::new("terraform");
    // The environment may point TF_CLI_CONFIG_FILE at a missing file (BUILD-NOTES.md).
    cmd.env("TF_CLI_CONFIG_FILE", "/dev/null")
        .env("CHECKPOINT_DISABLE", "1")
        .env("TF_IN_AUTOMATION", "1");
    Some(cmd)
}

fn run(mut cmd: Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run terraform: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("list dir") {
        let path = entry.expect("entry").path();
        let name = path.file_name().expect("file name");
        if name == ".terraform" || name == ".terraform.lock.hcl" {
            continue;
        }
        if path.is_dir() {
            copy_dir(&path, &to.join(name));
        } else {
            std::fs::copy(&path, to.join(name)).expect("copy file");
        }
    }
}

#[test]
fn terraform_fmt_check_passes() {
    let Some(mut cmd) = terraform() else { return };
    cmd.args(["fmt", "-check", "-recursive", "-diff", "-no-color"])
        .arg(terragrunt_dir());
    run(cmd, "terraform fmt -check -recursive terragrunt/");

    // `terraform fmt` skips *.hcl (other than *.tftest.hcl): check Terragrunt's files as .tf copies.
    let tmp = tempfile::tempdir().expect("tempdir");
    let units: Vec<PathBuf> = hcl_files(&terragrunt_dir())
        .into_iter()
        .filter(|p| {
            p.extension().is_some_and(|x| x == "hcl")
                && !p.to_string_lossy().ends_with(".tftest.hcl")
        })
        .collect();
    assert!(!units.is_empty());
    for (i, unit) in units.iter().enumerate() {
        std::fs::copy(unit, tmp.path().join(format!("{i}.tf"))).expect("copy");
    }
    let Some(mut cmd) = terraform() else { return };
    cmd.args(["fmt", "-check", "-diff", "-no-color"])
        .arg(tmp.path());
    run(cmd, &format!("terraform fmt -check of {units:?}"));
}

#[test]
fn terraform_test_of_the_naming_submodule_passes() {
    let Some(_) = terraform() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("naming");
    copy_dir(&module_dir().join("naming"), &dir);
    assert!(
        dir.join("tests/naming.tftest.hcl").is_file(),
        "naming has a terraform test"
    );
    for args in [
        &["init", "-backend=false", "-input=false", "-no-color"][..],
        &["test", "-no-color"][..],
    ] {
        let mut cmd = terraform().expect("terraform");
        cmd.current_dir(&dir).args(args);
        run(cmd, &format!("terraform {} (naming)", args[0]));
    }
}

/// Where a local copy of the hashicorp/aws provider may be (no provider can be downloaded here).
fn aws_plugin_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("AO_TF_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/tf-plugins"));
    dir.join("registry.terraform.io/hashicorp/aws")
        .is_dir()
        .then_some(dir)
}

#[test]
fn terraform_test_of_the_module_with_a_mocked_aws_provider_passes() {
    let Some(_) = terraform() else { return };
    let Some(plugins) = aws_plugin_dir() else {
        eprintln!("SKIPPED: no local hashicorp/aws provider (set AO_TF_PLUGIN_DIR); tests/module.tftest.hcl not run");
        return;
    };
    // The module's relative jobs path needs the repository layout: terragrunt/modules/<module>
    // beside jobs/, with a stub job file for each agent type the test file uses.
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("terragrunt/modules/agent-orchestrator");
    copy_dir(&module_dir(), &dir);
    let test_file = parse_file(&dir.join("tests/module.tftest.hcl"));
    let vars = blocks(&test_file, "variables")
        .next()
        .expect("file-level variables");
    let Some(Expression::Object(types)) = attr(&vars.body, "agent_types") else {
        panic!("agent_types object")
    };
    let jobs = tmp.path().join("jobs");
    std::fs::create_dir_all(&jobs).expect("jobs dir");
    std::fs::write(jobs.join("coordinator.nomad.hcl"), "").expect("stub");
    for key in types.keys() {
        std::fs::write(
            jobs.join(format!(
                "{}-agent.nomad.hcl",
                key.to_string().trim_matches('"')
            )),
            "",
        )
        .expect("stub");
    }
    let mut init = terraform().expect("terraform");
    init.current_dir(&dir)
        .args(["init", "-backend=false", "-input=false", "-no-color"])
        .arg(format!("-plugin-dir={}", plugins.display()));
    run(init, "terraform init (module)");
    let mut validate = terraform().expect("terraform");
    validate.current_dir(&dir).args(["validate", "-no-color"]);
    run(validate, "terraform validate (module)");
    let mut test = terraform().expect("terraform");
    test.current_dir(&dir).args(["test", "-no-color"]);
    run(test, "terraform test (module)");
}
