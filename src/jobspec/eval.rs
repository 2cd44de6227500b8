//! Expression evaluation with Nomad's jobspec semantics.
//!
//! * Literals, arrays, objects, arithmetic, comparisons and conditionals evaluate normally.
//! * `var.<name>` resolves to the variable's `default`; `local.<name>` to the local's value
//!   (evaluated lazily, so an unused local never has to be evaluable).
//! * Any other variable (`attr.kernel.name`, `NOMAD_META_x`, `node.unique.id`, ...) is a
//!   runtime reference: like Nomad's own parser it becomes the literal text `${...}` so the
//!   client interpolates it later.
//! * Function calls, `for` expressions and splats are rejected with a located error.

use std::cell::Cell;
use std::collections::HashMap;
use std::ops::Range;

use hcl::edit::expr::{BinaryOperator, Expression, ObjectKey, TraversalOperator, UnaryOperator};
use hcl::edit::template::{Directive, Element, Template};
use hcl::edit::Span;
use serde_json::{Map, Value};

use super::JobspecError;

/// Nesting limit for `local` references (guards against reference cycles).
const MAX_LOCAL_DEPTH: usize = 32;

/// The declared type of an input variable, as far as this parser converts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VarType {
    Any,
    String,
    Number,
    Bool,
}

/// An input variable declared with `variable "name" { ... }` or `variables { ... }`.
#[derive(Debug)]
pub(crate) struct Variable<'a> {
    pub default: Option<&'a Expression>,
    pub ty: VarType,
}

/// Everything expression evaluation needs: source text (for runtime references and line
/// numbers), the file name for errors, and the declared variables and locals.
pub(crate) struct Ctx<'a> {
    src: &'a str,
    file: &'a str,
    line_starts: Vec<usize>,
    pub vars: HashMap<String, Variable<'a>>,
    pub locals: HashMap<String, &'a Expression>,
    depth: Cell<usize>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(src: &'a str, file: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(src.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Ctx {
            src,
            file,
            line_starts,
            vars: HashMap::new(),
            locals: HashMap::new(),
            depth: Cell::new(0),
        }
    }

    /// 1-based line of a byte offset.
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|start| *start <= offset)
    }

    /// An error located at the start of `span` (or without a line when there is none).
    pub(crate) fn err(
        &self,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) -> JobspecError {
        JobspecError::new(self.file, span.map(|s| self.line_of(s.start)), message)
    }

    /// An error located at a line.
    pub(crate) fn err_line(&self, line: usize, message: impl Into<String>) -> JobspecError {
        JobspecError::new(self.file, Some(line), message)
    }

    /// Evaluates an expression to a JSON value.
    pub(crate) fn eval(&self, expr: &Expression) -> Result<Value, JobspecError> {
        match expr {
            Expression::Null(_) => Ok(Value::Null),
            Expression::Bool(b) => Ok(Value::Bool(*b.value())),
            Expression::Number(n) => number_value(n.value())
                .ok_or_else(|| self.err(expr.span(), "number is not finite")),
            Expression::String(s) => Ok(Value::String(s.value().clone())),
            Expression::Array(items) => items.iter().map(|e| self.eval(e)).collect(),
            Expression::Object(object) => {
                let mut map = Map::new();
                for (key, value) in object.iter() {
                    map.insert(self.object_key(key)?, self.eval(value.expr())?);
                }
                Ok(Value::Object(map))
            }
            Expression::StringTemplate(t) => self.eval_template(t),
            Expression::HeredocTemplate(h) => self.eval_template(&h.template),
            Expression::Parenthesis(p) => self.eval(p.inner()),
            Expression::Variable(name) => self.eval_variable(name.as_str(), expr),
            Expression::Traversal(t) => self.eval_traversal(&t.expr, &t.operators, expr),
            Expression::Conditional(c) => match truthy(&self.eval(&c.cond_expr)?) {
                Some(true) => self.eval(&c.true_expr),
                Some(false) => self.eval(&c.false_expr),
                None => Err(self.err(
                    c.cond_expr.span(),
                    "condition does not evaluate to a bool (runtime ${...} values cannot be used in conditions)",
                )),
            },
            Expression::UnaryOp(op) => {
                let value = self.eval(&op.expr)?;
                unary(*op.operator.value(), &value).ok_or_else(|| {
                    self.err(expr.span(), format!(
                        "cannot apply `{}` to {}{}",
                        op.operator.value(),
                        describe(&value),
                        runtime_hint(&[&value])
                    ))
                })
            }
            Expression::BinaryOp(op) => {
                let (lhs, rhs) = (self.eval(&op.lhs_expr)?, self.eval(&op.rhs_expr)?);
                binary(*op.operator.value(), &lhs, &rhs).ok_or_else(|| {
                    self.err(
                        expr.span(),
                        format!(
                            "cannot apply `{}` to {} and {}{}",
                            op.operator.value(),
                            describe(&lhs),
                            describe(&rhs),
                            runtime_hint(&[&lhs, &rhs])
                        ),
                    )
                })
            }
            Expression::FuncCall(call) => Err(self.err(
                expr.span(),
                format!(
                    "function call `{}(...)` is not supported (only literals, var.*, local.* and runtime ${{...}} references are evaluated)",
                    call.name.name.as_str()
                ),
            )),
            Expression::ForExpr(_) => Err(self.err(expr.span(), "`for` expressions are not supported")),
        }
    }

    fn object_key(&self, key: &ObjectKey) -> Result<String, JobspecError> {
        match key {
            ObjectKey::Ident(ident) => Ok(ident.as_str().to_string()),
            ObjectKey::Expression(e) => {
                let value = self.eval(e)?;
                scalar_string(&value).ok_or_else(|| {
                    self.err(
                        e.span(),
                        format!("object key must be a string, found {}", describe(&value)),
                    )
                })
            }
        }
    }

    fn eval_variable(&self, name: &str, expr: &Expression) -> Result<Value, JobspecError> {
        match name {
            "var" | "local" => Err(self.err(
                expr.span(),
                format!("`{name}` must be followed by a name, as in `{name}.example`"),
            )),
            _ => Ok(self.runtime_reference(expr)),
        }
    }

    /// `${<source text>}`: what Nomad's parser yields for a variable it does not know.
    fn runtime_reference(&self, expr: &Expression) -> Value {
        let text = expr
            .span()
            .and_then(|s| self.src.get(s))
            .map_or_else(|| expr.to_string().trim().to_string(), str::to_string);
        Value::String(format!("${{{text}}}"))
    }

    fn eval_traversal(
        &self,
        root: &Expression,
        operators: &[hcl::edit::Decorated<TraversalOperator>],
        whole: &Expression,
    ) -> Result<Value, JobspecError> {
        let (mut value, rest) = match root {
            Expression::Variable(name) if matches!(name.as_str(), "var" | "local") => {
                let Some((first, rest)) = operators.split_first() else {
                    return self.eval_variable(name.as_str(), whole);
                };
                let key = self.reference_name(name.as_str(), first.value(), whole)?;
                let value = if name.as_str() == "var" {
                    self.variable(&key, whole)?
                } else {
                    self.local(&key, whole)?
                };
                (value, rest)
            }
            Expression::Variable(_) => return Ok(self.runtime_reference(whole)),
            _ => (self.eval(root)?, operators),
        };
        for op in rest {
            value = self.traverse(value, op.value(), whole)?;
        }
        Ok(value)
    }

    /// The name in `var.<name>`, `local.<name>` or `var["<name>"]`.
    fn reference_name(
        &self,
        kind: &str,
        op: &TraversalOperator,
        whole: &Expression,
    ) -> Result<String, JobspecError> {
        match op {
            TraversalOperator::GetAttr(attr) => Ok(attr.as_str().to_string()),
            TraversalOperator::Index(e) => match self.eval(e)? {
                Value::String(s) => Ok(s),
                other => Err(self.err(
                    e.span(),
                    format!("invalid {kind} name {}", describe(&other)),
                )),
            },
            _ => Err(self.err(whole.span(), format!("invalid use of `{kind}`"))),
        }
    }

    fn traverse(
        &self,
        value: Value,
        op: &TraversalOperator,
        whole: &Expression,
    ) -> Result<Value, JobspecError> {
        let found = match op {
            TraversalOperator::GetAttr(attr) => match &value {
                Value::Object(map) => map.get(attr.as_str()).cloned(),
                _ => None,
            },
            TraversalOperator::Index(e) => {
                let key = self.eval(e)?;
                index(&value, &key)
            }
            TraversalOperator::LegacyIndex(i) => index(&value, &Value::from(*i.value())),
            TraversalOperator::AttrSplat(_) | TraversalOperator::FullSplat(_) => {
                return Err(self.err(whole.span(), "splat expressions are not supported"))
            }
        };
        found.ok_or_else(|| {
            self.err(
                whole.span(),
                format!("`{}` does not resolve to a value", whole.to_string().trim()),
            )
        })
    }

    fn variable(&self, name: &str, at: &Expression) -> Result<Value, JobspecError> {
        let var = self.vars.get(name).ok_or_else(|| {
            self.err(
                at.span(),
                format!("reference to undeclared input variable `var.{name}`"),
            )
        })?;
        let default = var.default.ok_or_else(|| {
            self.err(
                at.span(),
                format!("variable `{name}` has no default value (setting variables with -var is not supported)"),
            )
        })?;
        let value = self.nested(at, || self.eval(default))?;
        convert_variable(value, var.ty).map_err(|why| {
            self.err(
                default.span(),
                format!("default of variable `{name}`: {why}"),
            )
        })
    }

    fn local(&self, name: &str, at: &Expression) -> Result<Value, JobspecError> {
        let expr = self.locals.get(name).ok_or_else(|| {
            self.err(
                at.span(),
                format!("reference to undeclared local value `local.{name}`"),
            )
        })?;
        self.nested(at, || self.eval(expr))
    }

    /// Runs `f` one `local`/`var` level deeper, failing on reference cycles.
    fn nested(
        &self,
        at: &Expression,
        f: impl FnOnce() -> Result<Value, JobspecError>,
    ) -> Result<Value, JobspecError> {
        let depth = self.depth.get();
        if depth >= MAX_LOCAL_DEPTH {
            return Err(self.err(
                at.span(),
                format!(
                    "`{}` nests too deeply (reference cycle?)",
                    at.to_string().trim()
                ),
            ));
        }
        self.depth.set(depth + 1);
        let result = f();
        self.depth.set(depth);
        result
    }

    /// Evaluates a template. A template that is exactly one `${...}` keeps the value's type,
    /// as in HCL; anything else renders to a string.
    fn eval_template(&self, template: &Template) -> Result<Value, JobspecError> {
        if let Some(Element::Interpolation(interp)) = template.as_single_element() {
            return self.eval(&interp.expr);
        }
        self.render(template).map(Value::String)
    }

    fn render(&self, template: &Template) -> Result<String, JobspecError> {
        let mut out = String::new();
        let mut strip_next = false;
        for element in template.iter() {
            match element {
                Element::Literal(lit) => {
                    let text = lit.value();
                    out.push_str(if strip_next { text.trim_start() } else { text });
                    strip_next = false;
                }
                Element::Interpolation(interp) => {
                    if interp.strip.strip_start() {
                        out.truncate(out.trim_end().len());
                    }
                    let value = self.eval(&interp.expr)?;
                    let text = scalar_string(&value).ok_or_else(|| {
                        self.err(interp.expr.span(), format!("cannot interpolate {} into a string", describe(&value)))
                    })?;
                    out.push_str(&text);
                    strip_next = interp.strip.strip_end();
                }
                Element::Directive(directive) => match directive.as_ref() {
                    Directive::If(d) => {
                        if d.if_expr.strip.strip_start() {
                            out.truncate(out.trim_end().len());
                        }
                        let cond = self.eval(&d.if_expr.cond_expr)?;
                        let branch = match truthy(&cond) {
                            Some(true) => Some(&d.if_expr.template),
                            Some(false) => d.else_expr.as_ref().map(|e| &e.template),
                            None => {
                                return Err(self.err(
                                    d.if_expr.cond_expr.span(),
                                    "%{if} condition is not a bool; to keep a literal %{ for Nomad write %%{",
                                ))
                            }
                        };
                        if let Some(branch) = branch {
                            out.push_str(&self.render(branch)?);
                        }
                        strip_next = d.endif_expr.strip.strip_end();
                    }
                    Directive::For(d) => {
                        return Err(self.err(
                            d.for_expr.key_var.as_ref().and_then(|k| k.span()).or_else(|| d.for_expr.value_var.span()),
                            "%{for} template directives are not supported; to keep a literal %{ for Nomad write %%{",
                        ))
                    }
                },
            }
        }
        Ok(out)
    }
}

/// HCL number → JSON number, integral values as integers (Go marshals them that way).
pub(crate) fn number_value(n: &hcl::edit::Number) -> Option<Value> {
    if let Some(i) = n.as_i64() {
        Some(Value::from(i))
    } else if let Some(u) = n.as_u64() {
        Some(Value::from(u))
    } else {
        n.as_f64().and_then(float_value)
    }
}

/// f64 → JSON number, integral values as integers.
pub(crate) fn float_value(f: f64) -> Option<Value> {
    if !f.is_finite() {
        return None;
    }
    if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 {
        return Some(Value::from(f as i64));
    }
    serde_json::Number::from_f64(f).map(Value::Number)
}

/// The string HCL would produce for a primitive value (`None` for null, lists, objects).
pub(crate) fn scalar_string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A short description of a value's type for error messages.
pub(crate) fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("bool {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => {
            let short: String = s.chars().take(40).collect();
            let ellipsis = if short.len() < s.len() { "..." } else { "" };
            format!("string {short:?}{ellipsis}")
        }
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// A hint for operations on `${...}` runtime references, which only Nomad's client resolves.
fn runtime_hint(values: &[&Value]) -> &'static str {
    let runtime = values
        .iter()
        .any(|v| v.as_str().is_some_and(|s| s.starts_with("${")));
    if runtime {
        " (runtime ${...} references are resolved by Nomad later and cannot be computed on; write $${ for a literal ${)"
    } else {
        ""
    }
}

/// A bool, or a string spelling one (HCL converts those).
pub(crate) fn truthy(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s == "true" => Some(true),
        Value::String(s) if s == "false" => Some(false),
        _ => None,
    }
}

/// A number, or a string spelling one (HCL converts those).
pub(crate) fn numeric(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
        _ => None,
    }
}

fn index(value: &Value, key: &Value) -> Option<Value> {
    match value {
        Value::Array(items) => {
            let i = numeric(key).filter(|f| f.fract() == 0.0 && *f >= 0.0)?;
            items.get(i as usize).cloned()
        }
        Value::Object(map) => map.get(&scalar_string(key)?).cloned(),
        _ => None,
    }
}

fn unary(op: UnaryOperator, value: &Value) -> Option<Value> {
    match op {
        UnaryOperator::Neg => float_value(-numeric(value)?),
        UnaryOperator::Not => Some(Value::Bool(!truthy(value)?)),
    }
}

fn binary(op: BinaryOperator, lhs: &Value, rhs: &Value) -> Option<Value> {
    use BinaryOperator as B;
    let nums = || Some((numeric(lhs)?, numeric(rhs)?));
    let bools = || Some((truthy(lhs)?, truthy(rhs)?));
    match op {
        B::Eq => Some(Value::Bool(lhs == rhs)),
        B::NotEq => Some(Value::Bool(lhs != rhs)),
        B::Less => nums().map(|(a, b)| Value::Bool(a < b)),
        B::LessEq => nums().map(|(a, b)| Value::Bool(a <= b)),
        B::Greater => nums().map(|(a, b)| Value::Bool(a > b)),
        B::GreaterEq => nums().map(|(a, b)| Value::Bool(a >= b)),
        B::Plus => nums().and_then(|(a, b)| float_value(a + b)),
        B::Minus => nums().and_then(|(a, b)| float_value(a - b)),
        B::Mul => nums().and_then(|(a, b)| float_value(a * b)),
        B::Div => nums()
            .filter(|(_, b)| *b != 0.0)
            .and_then(|(a, b)| float_value(a / b)),
        B::Mod => nums()
            .filter(|(_, b)| *b != 0.0)
            .and_then(|(a, b)| float_value(a % b)),
        B::And => bools().map(|(a, b)| Value::Bool(a && b)),
        B::Or => bools().map(|(a, b)| Value::Bool(a || b)),
    }
}

/// Applies a variable's declared primitive type to its default, as HCL's conversion would.
fn convert_variable(value: Value, ty: VarType) -> Result<Value, String> {
    let mismatch = |want: &str| format!("expected {want}, found {}", describe(&value));
    match ty {
        VarType::Any => Ok(value),
        _ if value.is_null() => Ok(value),
        VarType::String => scalar_string(&value)
            .map(Value::String)
            .ok_or_else(|| mismatch("a string")),
        VarType::Number => numeric(&value)
            .and_then(float_value)
            .ok_or_else(|| mismatch("a number")),
        VarType::Bool => truthy(&value)
            .map(Value::Bool)
            .ok_or_else(|| mismatch("a bool")),
    }
}
