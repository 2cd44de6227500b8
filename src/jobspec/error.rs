//! The single error type of the jobspec parser: a located, one-line message.

use std::fmt;

/// A jobspec that could not be turned into Nomad API JSON.
///
/// `Display` is always exactly one line, `<file>:<line>: <what>`, where `<what>` names the
/// block or attribute at fault (for example
/// `jobs/x.nomad.hcl:12: unsupported block `csi_plugin` in task "web"`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", Located(.file, .line, .message))]
pub struct JobspecError {
    file: String,
    line: Option<usize>,
    message: String,
}

impl JobspecError {
    /// Creates an error for `file` at 1-based `line`; newlines in `message` are flattened so
    /// the rendered error stays on one line.
    pub(crate) fn new(file: &str, line: Option<usize>, message: impl Into<String>) -> Self {
        let message: String = message.into();
        let message = message
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        JobspecError {
            file: file.to_string(),
            line,
            message,
        }
    }

    /// The 1-based line the error points at, when it has one.
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// The file name given to [`super::parse_jobspec`].
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The message without the `<file>:<line>: ` prefix.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Renders `<file>:<line>: <what>` (or `<file>: <what>` without a line).
struct Located<'a>(&'a String, &'a Option<usize>, &'a String);

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            Some(line) => write!(f, "{}:{}: {}", self.0, line, self.2),
            None => write!(f, "{}: {}", self.0, self.2),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_one_located_line() {
        let e = JobspecError::new("jobs/x.nomad.hcl", Some(12), "bad\nthing");
        assert_eq!(e.to_string(), "jobs/x.nomad.hcl:12: bad thing");
        assert_eq!(e.line(), Some(12));
        let e = JobspecError::new("x.hcl", None, "no job");
        assert_eq!(e.to_string(), "x.hcl: no job");
        assert_eq!(e.line(), None);
    }
}
