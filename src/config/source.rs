//! Reads an inputs document — a `terragrunt.hcl`, a `*.tfvars(.json)` or a coordinator config
//! file — into a tree of [`Node`]s that remember their line, before any schema is applied.
//!
//! Terragrunt-only expressions (`dependency.vpc.outputs.vpc_id`, `find_in_parent_folders()`,
//! `"${local.x}-y"`) are kept as [`Value::Unresolved`] with their source text; only the schema
//! decides whether that is an error. `local.NAME` is resolved from the file's own `locals`
//! blocks when the local is a plain value.

use std::collections::HashMap;
use std::fmt;

use hcl::edit::expr::{Expression, ObjectKey, TraversalOperator};
use hcl::edit::structure::{Body, Structure};
use hcl::edit::template::Element;
use hcl::edit::Span;

/// A value read from an inputs document, with its location.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    /// 1-based line in the source, when the format tells it (HCL does, JSON does not).
    pub line: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    List(Vec<Node>),
    /// Keys in source order; duplicates are kept so the schema can report them.
    Map(Vec<(String, Node)>),
    /// An expression only Terragrunt/Terraform can evaluate, kept as its source text.
    Unresolved(String),
}

impl Value {
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a bool",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::List(_) => "a list",
            Value::Map(_) => "an object",
            Value::Unresolved(_) => "an unresolved expression",
        }
    }
}

/// The document could not be read as HCL or JSON at all.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Which spelling a document uses; decides where its inputs live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Hcl,
    Json,
}

impl Format {
    /// `.json` files are JSON; everything else (`.hcl`, `.tfvars`) is HCL.
    pub fn from_path(path: &str) -> Format {
        if path.ends_with(".json") {
            Format::Json
        } else {
            Format::Hcl
        }
    }
}

/// Reads a document's top level as a map. For a `terragrunt.hcl` (a file with an `inputs`
/// attribute) the map is the value of `inputs`; otherwise it is the file's top-level attributes.
pub fn read_document(source: &str, format: Format) -> Result<Node, SyntaxError> {
    match format {
        Format::Json => read_json(source),
        Format::Hcl => read_hcl(source),
    }
}

fn read_json(source: &str) -> Result<Node, SyntaxError> {
    let node: JsonNode = serde_json::from_str(source).map_err(|e| SyntaxError {
        line: Some(e.line()),
        message: format!("invalid JSON: {e}"),
    })?;
    let node = node.0;
    match &node.value {
        Value::Map(entries) => {
            // A tfvars.json may also wrap everything in `inputs` like a terragrunt file.
            if let [(key, inner)] = entries.as_slice() {
                if key == "inputs" && matches!(inner.value, Value::Map(_)) {
                    return Ok(inner.clone());
                }
            }
            Ok(node)
        }
        other => Err(SyntaxError {
            line: Some(1),
            message: format!(
                "expected a JSON object at the top level, found {}",
                other.kind()
            ),
        }),
    }
}

fn read_hcl(source: &str) -> Result<Node, SyntaxError> {
    let body: Body = hcl::edit::parser::parse_body(source).map_err(|e| SyntaxError {
        line: Some(e.location().line()),
        message: format!("invalid HCL: {}", e.message()),
    })?;
    let lines = LineIndex::new(source);
    let reader = HclReader {
        source,
        lines: &lines,
        locals: collect_locals(&body, source, &lines),
    };
    if let Some(inputs) = body.get_attribute("inputs") {
        return Ok(reader.expression(&inputs.value));
    }
    let mut entries = Vec::new();
    for structure in body.iter() {
        if let Structure::Attribute(attr) = structure {
            entries.push((
                attr.key.as_str().to_string(),
                reader.expression(&attr.value),
            ));
        }
    }
    let line = Some(1);
    Ok(Node {
        value: Value::Map(entries),
        line,
    })
}

fn collect_locals(body: &Body, source: &str, lines: &LineIndex) -> HashMap<String, Node> {
    let reader = HclReader {
        source,
        lines,
        locals: HashMap::new(),
    };
    let mut locals = HashMap::new();
    for block in body.get_blocks("locals") {
        for attr in block.body.attributes() {
            locals.insert(
                attr.key.as_str().to_string(),
                reader.expression(&attr.value),
            );
        }
    }
    locals
}

struct HclReader<'a> {
    source: &'a str,
    lines: &'a LineIndex,
    locals: HashMap<String, Node>,
}

impl HclReader<'_> {
    fn expression(&self, expr: &Expression) -> Node {
        let line = expr.span().map(|s| self.lines.line_of(s.start));
        let value = match expr {
            Expression::Null(_) => Value::Null,
            Expression::Bool(b) => Value::Bool(*b.value()),
            Expression::Number(n) => match n.value().as_f64() {
                Some(f) => Value::Number(f),
                None => self.unresolved(expr),
            },
            Expression::String(s) => Value::String(s.value().to_string()),
            Expression::Array(items) => {
                Value::List(items.iter().map(|item| self.expression(item)).collect())
            }
            Expression::Object(object) => Value::Map(
                object
                    .iter()
                    .map(|(key, value)| (self.object_key(key), self.expression(value.expr())))
                    .collect(),
            ),
            Expression::StringTemplate(template) => {
                // A template whose parts are all literal (e.g. only `$${` escapes) is a string.
                let mut text = String::new();
                let all_literal = template.iter().all(|element| match element {
                    Element::Literal(lit) => {
                        text.push_str(lit.value());
                        true
                    }
                    _ => false,
                });
                if all_literal {
                    Value::String(text)
                } else {
                    self.unresolved(expr)
                }
            }
            Expression::Parenthesis(inner) => return self.expression(inner.inner()),
            Expression::Traversal(traversal) => match self.local_reference(traversal) {
                // Errors about the value point at the reference, not at the `locals` block.
                Some(node) => return Node { line, ..node },
                None => self.unresolved(expr),
            },
            _ => self.unresolved(expr),
        };
        Node { value, line }
    }

    fn object_key(&self, key: &ObjectKey) -> String {
        match key {
            ObjectKey::Ident(ident) => ident.as_str().to_string(),
            ObjectKey::Expression(Expression::String(s)) => s.value().to_string(),
            ObjectKey::Expression(expr) => match self.expression(expr).value {
                Value::String(s) => s,
                _ => self.source_text(expr),
            },
        }
    }

    /// `local.NAME` where the file defines `locals { NAME = <plain value> }`.
    fn local_reference(&self, traversal: &hcl::edit::expr::Traversal) -> Option<Node> {
        let Expression::Variable(root) = &traversal.expr else {
            return None;
        };
        if root.as_str() != "local" || traversal.operators.len() != 1 {
            return None;
        }
        let TraversalOperator::GetAttr(name) = traversal.operators[0].value() else {
            return None;
        };
        self.locals
            .get(name.as_str())
            .filter(|node| !matches!(node.value, Value::Unresolved(_)))
            .cloned()
    }

    fn unresolved(&self, expr: &Expression) -> Value {
        Value::Unresolved(self.source_text(expr))
    }

    fn source_text(&self, expr: &Expression) -> String {
        expr.span()
            .and_then(|span| self.source.get(span))
            .map(|text| text.trim().to_string())
            .unwrap_or_else(|| "<expression>".to_string())
    }
}

/// Maps byte offsets to 1-based line numbers.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(source: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(source.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }

    fn line_of(&self, offset: usize) -> usize {
        match self.starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }
}

/// JSON read into [`Node`]s, keeping duplicate keys (serde_json's `Value` would drop them).
struct JsonNode(Node);

impl<'de> serde::Deserialize<'de> for JsonNode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

fn json(value: Value) -> JsonNode {
    JsonNode(Node { value, line: None })
}

impl<'de> serde::de::Visitor<'de> for JsonVisitor {
    type Value = JsonNode;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<JsonNode, E> {
        Ok(json(Value::Null))
    }
    fn visit_bool<E>(self, v: bool) -> Result<JsonNode, E> {
        Ok(json(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<JsonNode, E> {
        Ok(json(Value::Number(v as f64)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<JsonNode, E> {
        Ok(json(Value::Number(v as f64)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<JsonNode, E> {
        Ok(json(Value::Number(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<JsonNode, E> {
        Ok(json(Value::String(v.to_string())))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<JsonNode, A::Error> {
        let mut items = Vec::new();
        while let Some(JsonNode(node)) = seq.next_element()? {
            items.push(node);
        }
        Ok(json(Value::List(items)))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<JsonNode, A::Error> {
        let mut entries = Vec::new();
        while let Some((key, JsonNode(node))) = map.next_entry::<String, JsonNode>()? {
            entries.push((key, node));
        }
        Ok(json(Value::Map(entries)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(node: &Node) -> &[(String, Node)] {
        match &node.value {
            Value::Map(entries) => entries,
            other => panic!("expected a map, got {other:?}"),
        }
    }

    #[test]
    fn terragrunt_inputs_keep_unresolved_references_and_lines() {
        let src = r#"include "root" {
  path = find_in_parent_folders("root.hcl")
}
locals {
  env = "dev"
}
dependency "vpc" {
  config_path = "../vpc"
}
inputs = {
  environment = local.env
  vpc_id      = dependency.vpc.outputs.vpc_id
  name        = "x-${local.env}"
  literal     = "a $${attr.kernel.name} %%{if}"
}
"#;
        let root = read_document(src, Format::Hcl).unwrap();
        let entries = map(&root);
        assert_eq!(entries[0].1.value, Value::String("dev".into()));
        assert_eq!(entries[0].1.line, Some(11));
        assert_eq!(
            entries[1].1.value,
            Value::Unresolved("dependency.vpc.outputs.vpc_id".into())
        );
        assert_eq!(entries[1].1.line, Some(12));
        assert!(matches!(entries[2].1.value, Value::Unresolved(_)));
        assert_eq!(
            entries[3].1.value,
            Value::String("a ${attr.kernel.name} %{if}".into())
        );
    }

    #[test]
    fn tfvars_style_hcl_uses_top_level_attributes() {
        let root = read_document("cluster_name = \"c\"\nport = 8\n", Format::Hcl).unwrap();
        let entries = map(&root);
        assert_eq!(entries.len(), 2);
        assert_eq!(
            entries[1].1,
            Node {
                value: Value::Number(8.0),
                line: Some(2)
            }
        );
    }

    #[test]
    fn json_keeps_duplicate_keys_and_unwraps_inputs() {
        let root = read_document(r#"{"inputs": {"a": 1, "a": 2}}"#, Format::Json).unwrap();
        assert_eq!(map(&root).len(), 2);
    }

    #[test]
    fn syntax_errors_carry_a_line() {
        let err = read_document("a = 1\nb = {\n", Format::Hcl).unwrap_err();
        assert!(err.line.is_some(), "{err:?}");
        let err = read_document("{\n\"a\": }", Format::Json).unwrap_err();
        assert_eq!(err.line, Some(2));
        assert!(read_document("[1]", Format::Json).is_err());
    }
}
