//! The generic, table-driven decoder: walks an HCL body against a [`BlockSpec`], converts
//! every attribute and sub-block to its Nomad API field, and rejects anything the table does
//! not know with an error naming it and its line.

use std::collections::BTreeMap;
use std::ops::Range;

use hcl::edit::expr::Expression;
use hcl::edit::structure::{Block, BlockLabel, Body, Structure};
use hcl::edit::Span;
use serde_json::{Map, Value};

use super::duration::parse_go_duration;
use super::eval::{describe, float_value, numeric, scalar_string, truthy, Ctx};
use super::schema::{BlockSpec, Field, Kind};
use super::JobspecError;

/// A block being decoded, handed to a spec's `finish` hook.
pub(crate) struct Decoded<'a> {
    pub ctx: &'a Ctx<'a>,
    /// The decoded fields, label first, then in struct order.
    pub map: Map<String, Value>,
    /// The block's span (for errors raised by `finish`).
    pub span: Option<Range<usize>>,
    /// How messages name the block, e.g. `task "web"` or `` `scaling` block of group "x" ``.
    pub desc: String,
}

/// Decodes a body against `spec`. `label` is the block's label (if the spec takes one),
/// `desc` names the block in messages and `span` locates errors raised by `finish`.
pub(crate) fn decode_body(
    ctx: &Ctx<'_>,
    spec: &'static BlockSpec,
    body: &Body,
    label: Option<&str>,
    desc: &str,
    span: Option<Range<usize>>,
) -> Result<Map<String, Value>, JobspecError> {
    let mut slots: Vec<Option<Value>> = vec![None; spec.fields.len()];
    let mut seen = vec![false; spec.fields.len()];
    for structure in body.iter() {
        let index = lookup(ctx, spec, structure, desc)?;
        let repeatable = matches!(
            spec.fields[index].kind,
            Kind::Blocks(_) | Kind::LabeledMap(_)
        );
        if seen[index] && !repeatable {
            let (name, name_span, what) = named(structure);
            return Err(ctx.err(name_span, format!("duplicate {what} `{name}` in {desc}")));
        }
        seen[index] = true;
        let previous = slots[index].take();
        slots[index] = decode_structure(ctx, &spec.fields[index], structure, desc, previous)?;
    }
    let mut map = Map::new();
    if let (Some(key), Some(label)) = (spec.label, label) {
        map.insert(key.to_string(), Value::String(label.to_string()));
    }
    for (field, slot) in spec.fields.iter().zip(slots) {
        if let Some(value) = slot {
            map.insert(field.json.to_string(), value);
        }
    }
    let Some(finish) = spec.finish else {
        return Ok(map);
    };
    let mut decoded = Decoded {
        ctx,
        map,
        span,
        desc: desc.to_string(),
    };
    finish(&mut decoded)?;
    Ok(decoded.map)
}

/// Name, name span and "block"/"attribute" of a body item.
fn named(structure: &Structure) -> (&str, Option<Range<usize>>, &'static str) {
    match structure {
        Structure::Attribute(a) => (a.key.as_str(), a.key.span(), "attribute"),
        Structure::Block(b) => (b.ident.as_str(), b.ident.span(), "block"),
    }
}

/// The table index for a body item, or the "unsupported ..." error naming it.
fn lookup(
    ctx: &Ctx<'_>,
    spec: &BlockSpec,
    structure: &Structure,
    desc: &str,
) -> Result<usize, JobspecError> {
    let (name, name_span, what) = named(structure);
    let found = spec
        .fields
        .iter()
        .position(|f| f.hcl == name && !f.hcl.is_empty());
    match found.map(|i| (i, spec.fields[i].kind)) {
        None => Err(ctx.err(name_span, format!("unsupported {what} `{name}` in {desc}"))),
        Some((_, Kind::Rejected(why))) => Err(ctx.err(
            name_span,
            format!("unsupported {what} `{name}` in {desc}: {why}"),
        )),
        Some((index, _)) => Ok(index),
    }
}

/// Converts one attribute or block for `field`; `None` for a null attribute (unset).
fn decode_structure(
    ctx: &Ctx<'_>,
    field: &Field,
    structure: &Structure,
    desc: &str,
    previous: Option<Value>,
) -> Result<Option<Value>, JobspecError> {
    let (name, name_span, _) = named(structure);
    match structure {
        Structure::Attribute(a) if field.kind.is_attribute() => {
            convert_attribute(ctx, field, &a.value, desc)
        }
        Structure::Attribute(_) => Err(ctx.err(
            name_span,
            format!("`{name}` in {desc} must be a block (`{name} {{ ... }}`), not an attribute"),
        )),
        Structure::Block(b) if field.kind.is_block() => {
            decode_block_field(ctx, field, b, desc, previous).map(Some)
        }
        Structure::Block(_) => Err(ctx.err(
            name_span,
            format!("`{name}` in {desc} is an attribute; write `{name} = ...`"),
        )),
    }
}

/// Decodes one sub-block occurrence, merging it with what earlier occurrences produced.
fn decode_block_field(
    ctx: &Ctx<'_>,
    field: &Field,
    block: &Block,
    owner_desc: &str,
    previous: Option<Value>,
) -> Result<Value, JobspecError> {
    let name = block.ident.as_str();
    let owner = owner_of(owner_desc);
    match field.kind {
        Kind::Block(spec) => {
            no_labels(ctx, block, owner)?;
            let desc = format!("`{name}` block of {owner}");
            decode_body(ctx, spec, &block.body, None, &desc, block.span()).map(Value::Object)
        }
        Kind::Blocks(spec) => {
            let label = labels_for(ctx, spec, block, owner)?;
            let desc = describe_block(name, label.as_deref(), owner);
            let item = decode_body(
                ctx,
                spec,
                &block.body,
                label.as_deref(),
                &desc,
                block.span(),
            )?;
            let mut list = match previous {
                Some(Value::Array(list)) => list,
                _ => Vec::new(),
            };
            list.push(Value::Object(item));
            Ok(Value::Array(list))
        }
        Kind::LabeledMap(spec) => {
            let label = labels_for(ctx, spec, block, owner)?.unwrap_or_default();
            let desc = describe_block(name, Some(&label), owner);
            let item = decode_body(ctx, spec, &block.body, Some(&label), &desc, block.span())?;
            let mut map = match previous {
                Some(Value::Object(map)) => map,
                _ => Map::new(),
            };
            if map.contains_key(&label) {
                return Err(ctx.err(block.ident.span(), format!("duplicate {desc} in {owner}")));
            }
            map.insert(label, Value::Object(item));
            Ok(Value::Object(sorted(map)))
        }
        Kind::StrMap => {
            no_labels(ctx, block, owner)?;
            string_map_block(
                ctx,
                block,
                owner,
                |v| scalar_string(v).map(Value::String),
                "a string",
            )
        }
        Kind::ListMap => {
            no_labels(ctx, block, owner)?;
            string_map_block(ctx, block, owner, string_list, "a list of strings")
        }
        Kind::Config => {
            no_labels(ctx, block, owner)?;
            config_body(ctx, &block.body)
        }
        _ => Err(ctx.err(
            block.ident.span(),
            format!("unsupported block `{name}` in {owner}"),
        )),
    }
}

/// Converts an attribute value to the field's kind; `None` when the value is null (unset).
fn convert_attribute(
    ctx: &Ctx<'_>,
    field: &Field,
    expr: &Expression,
    desc: &str,
) -> Result<Option<Value>, JobspecError> {
    let value = ctx.eval(expr)?;
    if value.is_null() {
        return Ok(None);
    }
    let converted = match field.kind {
        Kind::Str => scalar_string(&value).map(Value::String).ok_or("a string"),
        Kind::Int => integer(&value).ok_or("a whole number"),
        Kind::Bool => truthy(&value).map(Value::Bool).ok_or("a bool"),
        Kind::Duration => {
            return duration(&value).map(Some).map_err(|why| {
                ctx.err(
                    expr.span(),
                    format!("attribute `{}` in {desc}: {why}", field.hcl),
                )
            })
        }
        Kind::StrList => {
            list_of(&value, |v| scalar_string(v).map(Value::String)).ok_or("a list of strings")
        }
        Kind::IntList => list_of(&value, integer).ok_or("a list of whole numbers"),
        Kind::StrMap => match &value {
            Value::Object(map) => map
                .iter()
                .map(|(k, v)| scalar_string(v).map(|s| (k.clone(), Value::String(s))))
                .collect::<Option<Map<_, _>>>()
                .map(|m| Value::Object(sorted(m)))
                .ok_or("a map of strings"),
            _ => Err("a map of strings"),
        },
        _ => Err("a block"),
    };
    converted.map(Some).map_err(|want| {
        ctx.err(
            expr.span(),
            format!(
                "attribute `{}` in {desc}: expected {want}, found {}",
                field.hcl,
                describe(&value)
            ),
        )
    })
}

/// A whole number (numeric strings accepted, as HCL converts them).
fn integer(value: &Value) -> Option<Value> {
    match value {
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(value.clone()),
        _ => numeric(value)
            .filter(|f| f.fract() == 0.0)
            .and_then(float_value),
    }
}

fn string_list(value: &Value) -> Option<Value> {
    list_of(value, |v| scalar_string(v).map(Value::String))
}

fn list_of(value: &Value, item: impl Fn(&Value) -> Option<Value>) -> Option<Value> {
    match value {
        Value::Array(items) => items
            .iter()
            .map(item)
            .collect::<Option<Vec<_>>>()
            .map(Value::Array),
        _ => None,
    }
}

/// A Go duration string, or a number of nanoseconds, as integer nanoseconds.
fn duration(value: &Value) -> Result<Value, String> {
    match value {
        Value::String(s) => parse_go_duration(s).map(Value::from),
        Value::Number(_) => {
            integer(value).ok_or_else(|| format!("expected a duration, found {}", describe(value)))
        }
        _ => Err(format!(
            "expected a duration such as \"30s\", found {}",
            describe(value)
        )),
    }
}

/// `name { key = value ... }` as a sorted map (Go marshals map keys in order).
fn string_map_block(
    ctx: &Ctx<'_>,
    block: &Block,
    owner: &str,
    convert: impl Fn(&Value) -> Option<Value>,
    want: &str,
) -> Result<Value, JobspecError> {
    let name = block.ident.as_str();
    let mut map = Map::new();
    for structure in block.body.iter() {
        match structure {
            Structure::Attribute(a) => {
                let value = ctx.eval(&a.value)?;
                let converted = convert(&value).ok_or_else(|| {
                    ctx.err(
                        a.value.span(),
                        format!(
                            "`{}` in `{name}` block of {owner}: expected {want}, found {}",
                            a.key.as_str(),
                            describe(&value)
                        ),
                    )
                })?;
                map.insert(a.key.as_str().to_string(), converted);
            }
            Structure::Block(b) => {
                return Err(ctx.err(
                    b.ident.span(),
                    format!(
                        "unsupported block `{}` in `{name}` block of {owner}",
                        b.ident.as_str()
                    ),
                ))
            }
        }
    }
    Ok(Value::Object(sorted(map)))
}

/// A driver `config` (or scaling `policy`, proxy `config`) body, converted the way Nomad's
/// `BlocksAsAttrs` does: attributes keep their values (object constructors wrapped in a
/// one-element list), nested blocks become lists of objects, labels nest as
/// `{label: [ {...} ]}`, and every map is key-sorted like a Go `map[string]interface{}`.
fn config_body(ctx: &Ctx<'_>, body: &Body) -> Result<Value, JobspecError> {
    let mut map: BTreeMap<String, Value> = BTreeMap::new();
    let mut from_blocks: Vec<String> = Vec::new();
    for structure in body.iter() {
        match structure {
            Structure::Attribute(a) => {
                let key = a.key.as_str().to_string();
                let mut value = sort_value(ctx.eval(&a.value)?);
                if matches!(a.value, Expression::Object(_)) {
                    value = Value::Array(vec![value]);
                }
                if map.insert(key.clone(), value).is_some() {
                    return Err(both_ways(ctx, a.key.span(), &key));
                }
            }
            Structure::Block(b) => {
                let key = b.ident.as_str().to_string();
                let item = config_block(ctx, b)?;
                match map.get_mut(&key) {
                    Some(Value::Array(list)) if from_blocks.contains(&key) => list.push(item),
                    Some(_) => return Err(both_ways(ctx, b.ident.span(), &key)),
                    None => {
                        from_blocks.push(key.clone());
                        map.insert(key, Value::Array(vec![item]));
                    }
                }
            }
        }
    }
    Ok(Value::Object(map.into_iter().collect()))
}

fn both_ways(ctx: &Ctx<'_>, span: Option<Range<usize>>, key: &str) -> JobspecError {
    ctx.err(
        span,
        format!("`{key}` is set both as an attribute and as a block"),
    )
}

fn config_block(ctx: &Ctx<'_>, block: &Block) -> Result<Value, JobspecError> {
    let mut value = config_body(ctx, &block.body)?;
    for label in block.labels.iter().rev() {
        let mut map = Map::new();
        map.insert(label_text(label).to_string(), Value::Array(vec![value]));
        value = Value::Object(map);
    }
    Ok(value)
}

/// Recursively key-sorts objects (Go marshals `map[string]interface{}` sorted).
fn sort_value(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(sorted(
            map.into_iter().map(|(k, v)| (k, sort_value(v))).collect(),
        )),
        Value::Array(items) => Value::Array(items.into_iter().map(sort_value).collect()),
        other => other,
    }
}

fn sorted(map: Map<String, Value>) -> Map<String, Value> {
    map.into_iter()
        .collect::<BTreeMap<_, _>>()
        .into_iter()
        .collect()
}

fn label_text(label: &BlockLabel) -> &str {
    match label {
        BlockLabel::Ident(i) => i.as_str(),
        BlockLabel::String(s) => s.value().as_str(),
    }
}

/// The single label a labelled block must have (`None` for specs without labels).
fn labels_for(
    ctx: &Ctx<'_>,
    spec: &BlockSpec,
    block: &Block,
    owner: &str,
) -> Result<Option<String>, JobspecError> {
    match spec.label {
        None => no_labels(ctx, block, owner).map(|()| None),
        Some(_) => match block.labels.as_slice() {
            [label] => Ok(Some(label_text(label).to_string())),
            _ => Err(ctx.err(
                block.ident.span(),
                format!(
                    "`{}` block in {owner} needs exactly one label, e.g. `{} \"name\" {{ ... }}`",
                    spec.name, spec.name
                ),
            )),
        },
    }
}

fn no_labels(ctx: &Ctx<'_>, block: &Block, owner: &str) -> Result<(), JobspecError> {
    match block.labels.first() {
        None => Ok(()),
        Some(label) => Err(ctx.err(
            label.span().or_else(|| block.ident.span()),
            format!("`{}` block in {owner} takes no label", block.ident.as_str()),
        )),
    }
}

/// `task "web"` for labelled blocks, `` `resources` block of task "web" `` otherwise.
fn describe_block(name: &str, label: Option<&str>, owner: &str) -> String {
    match label {
        Some(label) => format!("{name} {label:?}"),
        None => format!("`{name}` block of {owner}"),
    }
}

/// The nearest labelled ancestor named in a description.
fn owner_of(desc: &str) -> &str {
    desc.rsplit_once(" block of ")
        .map_or(desc, |(_, owner)| owner)
}

// ---------------------------------------------------------------- finish hooks

fn take_string(map: &mut Map<String, Value>, key: &str) -> Option<String> {
    match map.remove(key) {
        Some(Value::String(s)) if !s.is_empty() => Some(s),
        _ => None,
    }
}

fn ensure_string(map: &mut Map<String, Value>, key: &str, default: &str) {
    let empty = map
        .get(key)
        .and_then(Value::as_str)
        .is_none_or(str::is_empty);
    if empty {
        map.insert(key.to_string(), Value::String(default.to_string()));
    }
}

/// Re-orders `map` by the spec's field order (label first, unknown keys last).
pub(crate) fn reorder(map: &mut Map<String, Value>, spec: &BlockSpec) {
    let mut entries: Vec<(String, Value)> = std::mem::take(map).into_iter().collect();
    entries.sort_by_key(|(k, _)| spec.rank(k));
    *map = entries.into_iter().collect();
}

/// Applies one operator shorthand (`version = "..."`, ...) the way Nomad's decoder does.
fn shorthand(map: &mut Map<String, Value>, key: &str, operand: &str) {
    if let Some(value) = take_string(map, key) {
        map.insert("Operand".into(), Value::String(operand.into()));
        map.insert("RTarget".into(), Value::String(value));
    }
}

/// `constraint`: operator shorthands, `distinct_hosts`/`distinct_property`, default `=`.
pub(crate) fn finish_constraint(d: &mut Decoded<'_>) -> Result<(), JobspecError> {
    let map = &mut d.map;
    for (key, operand) in [
        ("_version", "version"),
        ("_semver", "semver"),
        ("_regexp", "regexp"),
        ("_set_contains", "set_contains"),
    ] {
        shorthand(map, key, operand);
    }
    if map.remove("_distinct_hosts") == Some(Value::Bool(true)) {
        map.insert("Operand".into(), Value::String("distinct_hosts".into()));
    }
    if let Some(property) = take_string(map, "_distinct_property") {
        map.insert("Operand".into(), Value::String("distinct_property".into()));
        map.insert("LTarget".into(), Value::String(property));
    }
    finish_targets(map, &super::schema::CONSTRAINT);
    Ok(())
}

/// `affinity`: operator shorthands and default `=`.
pub(crate) fn finish_affinity(d: &mut Decoded<'_>) -> Result<(), JobspecError> {
    let map = &mut d.map;
    for (key, operand) in [
        ("_version", "version"),
        ("_semver", "semver"),
        ("_regexp", "regexp"),
        ("_set_contains_any", "set_contains_any"),
        ("_set_contains_all", "set_contains_all"),
        ("_set_contains", "set_contains"),
    ] {
        shorthand(map, key, operand);
    }
    finish_targets(map, &super::schema::AFFINITY);
    Ok(())
}

/// LTarget/RTarget/Operand are plain Go strings, always present in Nomad's output.
fn finish_targets(map: &mut Map<String, Value>, spec: &BlockSpec) {
    map.entry("LTarget")
        .or_insert_with(|| Value::String(String::new()));
    map.entry("RTarget")
        .or_insert_with(|| Value::String(String::new()));
    ensure_string(map, "Operand", "=");
    reorder(map, spec);
}

/// Group `scaling`: `max` is required, `type` defaults to (and must be) `horizontal`.
pub(crate) fn finish_group_scaling(d: &mut Decoded<'_>) -> Result<(), JobspecError> {
    if !d.map.contains_key("Max") {
        return Err(d
            .ctx
            .err(d.span.clone(), format!("{} requires `max`", d.desc)));
    }
    ensure_string(&mut d.map, "Type", "horizontal");
    if d.map.get("Type").and_then(Value::as_str) != Some("horizontal") {
        return Err(d.ctx.err(
            d.span.clone(),
            format!(
                "{}: task group scaling policy type must be \"horizontal\"",
                d.desc
            ),
        ));
    }
    Ok(())
}
