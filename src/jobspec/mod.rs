//! Nomad jobspec (HCL2) → Nomad API JSON (`{"Job": {...}}`), like `nomad job run -output`
//! or `POST /v1/jobs/parse`: the engine of the `parse` command.
//!
//! This module owns reading a jobspec and producing the API JSON for it. It parses with
//! `hcl-edit` (which keeps byte spans, so every error names a line), then:
//!
//! * `schema` — the grammar as data: each block's HCL attributes/sub-blocks, the Nomad API
//!   field each becomes (`memory` → `MemoryMB`, `cron` → `Spec`, ...) and its kind
//!   (string, int, bool, duration → integer nanoseconds, list, map, block, driver config);
//! * `decode` — walks the HCL against those tables; anything not in them is an error naming
//!   the block or attribute and its line, never silently dropped;
//! * `eval` — expression evaluation: literals, `var.*` (from `variable` defaults),
//!   `local.*`, arithmetic/conditionals; runtime references such as `${attr.kernel.name}` or
//!   `${NOMAD_META_x}` stay verbatim for Nomad to interpolate; function calls are rejected;
//! * `normalize` — the defaults Nomad's own parser fills in (IDs from labels, template and
//!   vault defaults, reserved/dynamic port split, default identity, ...).
//!
//! Output is sparse: fields the jobspec does not set are omitted instead of being emitted as
//! `null`/zero values (Nomad's API treats both the same). Present fields appear in the order
//! of Nomad's Go structs; map-typed fields (`Meta`, `Env`, `Config`, ...) are key-sorted as
//! Go marshals them.
//!
//! Deliberately not supported (each a located error): HCL function calls, `for`
//! expressions, splats, `%{for}` directives, `dynamic` blocks, `-var` overrides (only
//! `default`s), JSON jobspecs, and the blocks `multiregion`, `csi_plugin`, task `scaling`,
//! `secret`, `schedule`, connect `gateway` and `reserved_ports`.

mod decode;
mod duration;
mod error;
mod eval;
mod normalize;
mod schema;
#[cfg(test)]
mod tests;

use hcl::edit::expr::Expression;
use hcl::edit::structure::{Block, BlockLabel, Body, Structure};
use hcl::edit::Span;
use serde_json::Value;

pub use error::JobspecError;
use eval::{Ctx, VarType, Variable};

/// Parses a Nomad jobspec and returns `{"Job": {...}}` in Nomad API JSON.
///
/// `file` is only used to name the source in errors.
pub fn parse_jobspec(source: &str, file: &str) -> Result<Value, JobspecError> {
    if let Some(offset) = source.find(|c: char| !c.is_whitespace()) {
        if source[offset..].starts_with('{') {
            let line = source[..offset].matches('\n').count() + 1;
            return Err(JobspecError::new(
                file,
                Some(line),
                "JSON jobspecs are not supported; give the HCL jobspec",
            ));
        }
    }
    let body = hcl::edit::parser::parse_body(source).map_err(|e| {
        JobspecError::new(
            file,
            Some(e.location().line()),
            format!("HCL syntax error: {}", e.message()),
        )
    })?;
    let mut ctx = Ctx::new(source, file);
    let job = top_level(&mut ctx, &body)?;
    let label = job
        .labels
        .first()
        .map(label_text)
        .unwrap_or_default()
        .to_string();
    let desc = format!("job {label:?}");
    let mut job_json = decode::decode_body(&ctx, &schema::JOB, &job.body, None, &desc, job.span())?;
    normalize::normalize_job(&mut job_json, &label);
    let mut out = serde_json::Map::new();
    out.insert("Job".into(), Value::Object(job_json));
    Ok(Value::Object(out))
}

/// Reads the top level: one `job` block, plus `variable`, `variables` and `locals` blocks
/// (recorded in `ctx`). Returns the job block.
fn top_level<'a>(ctx: &mut Ctx<'a>, body: &'a Body) -> Result<&'a Block, JobspecError> {
    let mut job: Option<&Block> = None;
    for structure in body.iter() {
        let block = match structure {
            Structure::Block(block) => block,
            Structure::Attribute(a) => {
                return Err(ctx.err(
                    a.key.span(),
                    format!(
                        "unexpected top-level attribute `{}`; a jobspec holds one `job` block and optional `variable`, `variables` and `locals` blocks",
                        a.key.as_str()
                    ),
                ))
            }
        };
        let name = block.ident.as_str();
        match name {
            "job" => {
                expect_labels(ctx, block, 1, "job \"name\"")?;
                if job.is_some() {
                    return Err(ctx.err(block.ident.span(), "duplicate `job` block; a jobspec holds exactly one job"));
                }
                job = Some(block);
            }
            "variable" => {
                expect_labels(ctx, block, 1, "variable \"name\"")?;
                declare_variable(ctx, block)?;
            }
            "variables" => {
                expect_labels(ctx, block, 0, "variables")?;
                for (key, expr) in plain_attributes(ctx, &block.body, "`variables` block")? {
                    add_variable(ctx, key, Some(expr), VarType::Any, block)?;
                }
            }
            "locals" => {
                expect_labels(ctx, block, 0, "locals")?;
                for (key, expr) in plain_attributes(ctx, &block.body, "`locals` block")? {
                    if ctx.locals.insert(key.to_string(), expr).is_some() {
                        return Err(ctx.err(expr.span(), format!("duplicate local value `{key}`")));
                    }
                }
            }
            _ => {
                return Err(ctx.err(
                    block.ident.span(),
                    format!("unsupported top-level block `{name}`; expected `job`, `variable`, `variables` or `locals`"),
                ))
            }
        }
    }
    job.ok_or_else(|| ctx.err_line(1, "no `job` block found"))
}

/// `variable "name" { type = ..., default = ..., description = ..., sensitive = ... }`.
fn declare_variable<'a>(ctx: &mut Ctx<'a>, block: &'a Block) -> Result<(), JobspecError> {
    let name = block.labels.first().map(label_text).unwrap_or_default();
    let mut default = None;
    let mut ty = VarType::Any;
    for structure in block.body.iter() {
        match structure {
            Structure::Attribute(a) => match a.key.as_str() {
                "default" => default = Some(&a.value),
                "type" => ty = variable_type(&a.value),
                "description" | "sensitive" | "nullable" => {}
                other => {
                    return Err(ctx.err(
                        a.key.span(),
                        format!("unsupported attribute `{other}` in variable {name:?}"),
                    ))
                }
            },
            // Validation rules only constrain values passed with -var, which this parser
            // does not take; the defaults are the author's own.
            Structure::Block(b) if b.ident.as_str() == "validation" => {}
            Structure::Block(b) => {
                return Err(ctx.err(
                    b.ident.span(),
                    format!(
                        "unsupported block `{}` in variable {name:?}",
                        b.ident.as_str()
                    ),
                ))
            }
        }
    }
    add_variable(ctx, name, default, ty, block)
}

fn add_variable<'a>(
    ctx: &mut Ctx<'a>,
    name: &str,
    default: Option<&'a Expression>,
    ty: VarType,
    block: &Block,
) -> Result<(), JobspecError> {
    if ctx
        .vars
        .insert(name.to_string(), Variable { default, ty })
        .is_some()
    {
        return Err(ctx.err(block.ident.span(), format!("duplicate variable `{name}`")));
    }
    Ok(())
}

/// The primitive type named by a variable's `type` (complex types are not converted).
fn variable_type(expr: &Expression) -> VarType {
    match expr {
        Expression::Variable(v) => match v.as_str() {
            "string" => VarType::String,
            "number" => VarType::Number,
            "bool" => VarType::Bool,
            _ => VarType::Any,
        },
        _ => VarType::Any,
    }
}

/// The attributes of a body that may only hold attributes (`locals`, `variables`).
fn plain_attributes<'a>(
    ctx: &Ctx<'_>,
    body: &'a Body,
    what: &str,
) -> Result<Vec<(&'a str, &'a Expression)>, JobspecError> {
    body.iter()
        .map(|structure| match structure {
            Structure::Attribute(a) => Ok((a.key.as_str(), &a.value)),
            Structure::Block(b) => Err(ctx.err(
                b.ident.span(),
                format!("unsupported block `{}` in {what}", b.ident.as_str()),
            )),
        })
        .collect()
}

fn expect_labels(
    ctx: &Ctx<'_>,
    block: &Block,
    count: usize,
    example: &str,
) -> Result<(), JobspecError> {
    if block.labels.len() == count {
        return Ok(());
    }
    let what = if count == 0 {
        "takes no label".to_string()
    } else {
        format!("needs exactly {count} label")
    };
    Err(ctx.err(
        block.ident.span(),
        format!(
            "`{}` block {what}: write `{example} {{ ... }}`",
            block.ident.as_str()
        ),
    ))
}

fn label_text(label: &BlockLabel) -> &str {
    match label {
        BlockLabel::Ident(i) => i.as_str(),
        BlockLabel::String(s) => s.value().as_str(),
    }
}
