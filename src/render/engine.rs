//! The handlebars engine: compiles the two job templates and renders them from [`Inputs`].
//!
//! Pure, no I/O: template sources come in as strings (see `files.rs` for reading them) and
//! rendered jobs come out as strings. The registry runs in strict mode (a misspelt variable is
//! an error, not an empty string) with HTML escaping off; operator text reaches the output only
//! through the escaping helpers:
//!
//! * `{{hcl x}}` — a string as a quoted, escaped HCL literal ([`super::escape::hcl_string`]);
//!   a number or bool as itself; a list as an HCL list of those;
//! * `{{hcl_heredoc x}}` — a long multi-line string as an escaped heredoc
//!   ([`super::escape::hcl_heredoc`]);
//! * `{{hcl_key x}}` — an attribute name (`env` keys); anything but an identifier is refused.

use handlebars::{
    Context, Handlebars, Helper, HelperResult, Output, RenderContext, RenderErrorReason,
    TemplateError,
};
use serde::Serialize;
use serde_json::Value;

use super::context::{AgentContext, CoordinatorContext, ShippedJob};
use super::escape::{hcl_heredoc, hcl_string, is_hcl_identifier};
use super::RenderError;
use crate::config::Inputs;

/// File name of the coordinator job's template inside the templates directory.
pub const COORDINATOR_TEMPLATE: &str = "coordinator.nomad.hcl.hbs";
/// File name of the agent job template (rendered once per agent type).
pub const AGENT_TEMPLATE: &str = "agent.nomad.hcl.hbs";

/// The compiled templates.
pub struct Templates {
    registry: Handlebars<'static>,
    /// How errors name the templates' directory (`templates/`).
    dir: String,
}

/// One rendered job, not yet written anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedJob {
    /// `coordinator` or `<type>-agent`; the file is `<name>.nomad.hcl` or `<name>.json`.
    pub name: String,
    /// The template it came from ([`COORDINATOR_TEMPLATE`] or [`AGENT_TEMPLATE`]).
    pub template: &'static str,
    /// The agent type, for agent jobs.
    pub agent_type: Option<String>,
    /// The Nomad job id the template was asked to produce.
    pub job_id: String,
    /// The jobspec (HCL).
    pub hcl: String,
}

impl RenderedJob {
    /// File name of the rendered HCL: `<name>.nomad.hcl`.
    pub fn hcl_file_name(&self) -> String {
        format!("{}.nomad.hcl", self.name)
    }

    /// File name of the API JSON form: `<name>.json`.
    pub fn json_file_name(&self) -> String {
        format!("{}.json", self.name)
    }
}

impl Templates {
    /// Compiles the two templates. `dir` only names the directory in errors.
    pub fn from_sources(
        coordinator: &str,
        agent: &str,
        dir: &str,
    ) -> Result<Templates, RenderError> {
        let mut registry = Handlebars::new();
        registry.set_strict_mode(true);
        registry.register_escape_fn(handlebars::no_escape);
        registry.register_helper("hcl", Box::new(hcl_helper));
        registry.register_helper("hcl_key", Box::new(hcl_key_helper));
        registry.register_helper("hcl_heredoc", Box::new(hcl_heredoc_helper));
        let dir = dir.to_string();
        for (name, source) in [(COORDINATOR_TEMPLATE, coordinator), (AGENT_TEMPLATE, agent)] {
            registry
                .register_template_string(name, source)
                .map_err(|e| template_error(&dir, name, &e))?;
        }
        Ok(Templates { registry, dir })
    }

    /// Path of a template as errors show it (`templates/agent.nomad.hcl.hbs`).
    pub fn path_of(&self, template: &str) -> String {
        join(&self.dir, template)
    }

    fn render<T: Serialize>(
        &self,
        template: &'static str,
        data: &T,
        file: &str,
    ) -> Result<String, RenderError> {
        self.registry.render(template, data).map_err(|e| {
            let line = e.line_no.map(|l| format!(":{l}")).unwrap_or_default();
            let column = match (e.line_no, e.column_no) {
                (Some(_), Some(c)) => format!(":{c}"),
                _ => String::new(),
            };
            RenderError::Template {
                template: self.path_of(template),
                message: format!(
                    "{}{line}{column}: rendering {file}: {}",
                    self.path_of(template),
                    e.reason()
                ),
            }
        })
    }
}

/// Renders the coordinator job and one job per agent type (in agent type order).
///
/// `out_dir` only names the files in errors (`jobs/coder-agent.nomad.hcl`).
pub fn render_jobs(
    inputs: &Inputs,
    templates: &Templates,
    out_dir: &str,
) -> Result<Vec<RenderedJob>, RenderError> {
    let mut agents = Vec::with_capacity(inputs.agent_types.len());
    for agent_type in inputs.agent_types.values() {
        let ctx = AgentContext::new(inputs, agent_type);
        let name = format!("{}-agent", agent_type.name);
        let file = join(out_dir, &format!("{name}.nomad.hcl"));
        let hcl = templates.render(AGENT_TEMPLATE, &ctx, &file)?;
        agents.push(RenderedJob {
            name,
            template: AGENT_TEMPLATE,
            agent_type: Some(agent_type.name.clone()),
            job_id: ctx.job_id,
            hcl,
        });
    }
    // The coordinator carries the agent jobs it registers (its image has no `jobs/`).
    let shipped = agents
        .iter()
        .map(|job| ShippedJob::new(job, out_dir))
        .collect::<Result<Vec<_>, _>>()?;
    let coordinator = CoordinatorContext::new(inputs, shipped);
    let name = "coordinator".to_string();
    let hcl = templates.render(
        COORDINATOR_TEMPLATE,
        &coordinator,
        &join(out_dir, &format!("{name}.nomad.hcl")),
    )?;
    let mut jobs = Vec::with_capacity(agents.len() + 1);
    jobs.push(RenderedJob {
        name,
        template: COORDINATOR_TEMPLATE,
        agent_type: None,
        job_id: coordinator.job_id,
        hcl,
    });
    jobs.extend(agents);
    Ok(jobs)
}

/// `dir/name`, without doubling a trailing `/`.
pub(crate) fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

fn template_error(dir: &str, name: &str, e: &TemplateError) -> RenderError {
    let path = join(dir, name);
    let at = match e.pos() {
        Some((line, column)) => format!(":{line}:{column}"),
        None => String::new(),
    };
    RenderError::Template {
        template: path.clone(),
        message: format!("{path}{at}: broken template: {}", e.reason()),
    }
}

/// The one helper's parameter; strict mode forbids a missing one.
fn param<'a>(h: &'a Helper<'_>, name: &'static str) -> Result<&'a Value, RenderErrorReason> {
    match h.param(0) {
        Some(p) if !p.is_value_missing() => Ok(p.value()),
        Some(p) => Err(RenderErrorReason::MissingVariable(
            p.relative_path().cloned(),
        )),
        None => Err(RenderErrorReason::ParamNotFoundForIndex(name, 0)),
    }
}

/// `{{hcl value}}`: a string as a quoted, escaped HCL string; a number or bool as itself; a
/// list as an HCL list of the same. Anything else (null, objects) is a template bug.
fn hcl_helper(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let value = param(h, "hcl")?;
    let literal = hcl_literal(value).ok_or_else(|| {
        RenderErrorReason::Other(format!(
            "`hcl` takes a string, number, bool or list of them; got {}",
            describe(value)
        ))
    })?;
    out.write(&literal)?;
    Ok(())
}

/// `{{hcl_heredoc text}}`: a string as an escaped heredoc (or quoted when it cannot be one).
fn hcl_heredoc_helper(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    match param(h, "hcl_heredoc")? {
        Value::String(s) => {
            out.write(&hcl_heredoc(s))?;
            Ok(())
        }
        other => Err(RenderErrorReason::Other(format!(
            "`hcl_heredoc` takes a string; got {}",
            describe(other)
        ))
        .into()),
    }
}

/// `{{hcl_key name}}`: a block attribute name (e.g. an `env` key), which must be an HCL
/// identifier; anything else is refused rather than written.
fn hcl_key_helper(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let value = param(h, "hcl_key")?;
    match value {
        Value::String(s) if is_hcl_identifier(s) => {
            out.write(s)?;
            Ok(())
        }
        other => Err(RenderErrorReason::Other(format!(
            "`hcl_key` needs an identifier (letters, digits, `_`, `-`); got {}",
            describe(other)
        ))
        .into()),
    }
}

fn hcl_literal(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(hcl_string(s)),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(items) => {
            let items: Option<Vec<String>> = items.iter().map(hcl_literal).collect();
            Some(format!("[{}]", items?.join(", ")))
        }
        Value::Null | Value::Object(_) => None,
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Object(_) => "an object".into(),
        Value::Array(_) => "a list".into(),
        other => hcl_literal(other).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render_one(template: &str, data: &Value) -> Result<String, String> {
        let t = Templates::from_sources(template, "", "t").map_err(|e| e.to_string())?;
        t.render(COORDINATOR_TEMPLATE, data, "out.hcl")
            .map_err(|e| e.to_string())
    }

    #[test]
    fn helpers_write_literals() {
        let data = serde_json::json!({"s": "a\"${b}", "n": 42, "l": ["x", "%{y}"], "b": true, "k": "LOG_LEVEL", "h": "${x}\n"});
        let out = render_one(
            "{{hcl s}} {{hcl n}} {{hcl l}} {{hcl b}} {{hcl_key k}} = 1 {{hcl_heredoc h}}",
            &data,
        );
        assert_eq!(
            out.as_deref(),
            Ok("\"a\\\"$${b}\" 42 [\"x\", \"%%{y}\"] true LOG_LEVEL = 1 <<EOT\n$${x}\nEOT")
        );
    }

    #[test]
    fn strict_mode_and_bad_helper_arguments_are_errors_naming_the_template_line() {
        let data = serde_json::json!({"o": {"a": 1}, "n": null, "k": "A B"});
        for (template, needle) in [
            ("ok\n{{missing}}", "t/coordinator.nomad.hcl.hbs:2:1"),
            ("ok\n\n  {{hcl missing}}", "t/coordinator.nomad.hcl.hbs:3:3"),
            ("{{hcl o}}", "an object"),
            ("{{hcl n}}", "null"),
            ("{{hcl_key k}}", "identifier"),
        ] {
            let err = render_one(template, &data).expect_err(template);
            assert!(err.contains(needle), "{template:?}: {err}");
        }
    }

    #[test]
    fn broken_template_names_file_and_line() {
        let err = render_one("a\nb {{#if x}}\n", &Value::Null).expect_err("unclosed block");
        assert!(err.starts_with("t/coordinator.nomad.hcl.hbs:"), "{err}");
        assert!(err.contains("broken template"), "{err}");
    }

    #[test]
    fn html_is_not_escaped() {
        let data = serde_json::json!({"s": "<a & b>"});
        assert_eq!(render_one("{{hcl s}}", &data).as_deref(), Ok("\"<a & b>\""));
    }
}
