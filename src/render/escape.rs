//! HCL literals for text that came from the operator: the only way input reaches a rendered job.
//!
//! Pure functions, no I/O. [`hcl_string`] turns any string into a complete, quoted HCL string
//! literal that Nomad reads back as exactly that string: no input can close the string, start
//! an HCL template (`${...}`, `%{...}`) or leave a Nomad runtime interpolation (`${attr.x}`,
//! `${NOMAD_META_x}`) for the client to expand.

use std::fmt::Write as _;

/// A complete, quoted HCL string literal whose value is exactly `text`.
///
/// `\` → `\\`, `"` → `\"`, newline / carriage return / tab → `\n` / `\r` / `\t`, any other
/// control character → `\uXXXX`, `${` → `$${` and `%{` → `%%{` (HCL's escapes for a literal
/// template-introducer, so neither HCL nor Nomad ever interpolates them).
pub fn hcl_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '$' | '%' if chars.peek() == Some(&'{') => {
                // Doubling the introducer is HCL's escape: `$${` reads back as `${`.
                out.push(c);
                out.push(c);
            }
            c if c.is_control() => {
                // Control characters are all in the Basic Multilingual Plane (≤ U+009F).
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// An HCL heredoc (`<<EOT` ... `EOT`) whose value is exactly `text`, for long multi-line
/// values (the coordinator's inputs file) that read better as lines than as one `\n`-escaped
/// string.
///
/// Heredocs take no backslash escapes, so only `${` → `$${` and `%{` → `%%{` are escaped, and
/// the marker is chosen so that no line of `text` closes the heredoc early. A heredoc's value
/// always ends with a newline: text that does not, or that holds control characters other
/// than newline and tab, gets the quoted form of [`hcl_string`] instead.
pub fn hcl_heredoc(text: &str) -> String {
    let representable = text.ends_with('\n')
        && !text
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t');
    if !representable {
        return hcl_string(text);
    }
    // No line may even start with the marker: the jobspec parser ends a heredoc at a line
    // like `EOT}` too, not only at a bare `EOT`.
    let mut marker = "EOT".to_string();
    let mut n = 0;
    while text
        .lines()
        .any(|line| line.trim_start().starts_with(marker.as_str()))
    {
        n += 1;
        marker = format!("EOT{n}");
    }
    let mut out = String::with_capacity(text.len() + 2 * marker.len() + 4);
    out.push_str("<<");
    out.push_str(&marker);
    out.push('\n');
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if (c == '$' || c == '%') && chars.peek() == Some(&'{') {
            out.push(c);
        }
        out.push(c);
    }
    out.push_str(&marker);
    out
}

/// Whether `text` can stand unquoted as an HCL attribute name (`[A-Za-z_][A-Za-z0-9_-]*`).
///
/// Keys of `env { ... }` blocks must be identifiers; the inputs schema already restricts
/// environment variable names to `[A-Za-z_][A-Za-z0-9_]*`, which all qualify.
pub fn is_hcl_identifier(text: &str) -> bool {
    let mut chars = text.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One escaping case: the input and the exact literal it must become.
    fn check(input: &str, expected: &str) {
        assert_eq!(hcl_string(input), expected, "escaping {input:?}");
    }

    #[test]
    fn escapes_every_special_sequence() {
        let table: &[(&str, &str)] = &[
            ("", r#""""#),
            ("plain text", r#""plain text""#),
            ("ghcr.io/org/img:1.0", r#""ghcr.io/org/img:1.0""#),
            (r"back\slash", r#""back\\slash""#),
            (r#"say "hi""#, r#""say \"hi\"""#),
            ("two\nlines", r#""two\nlines""#),
            ("cr\rlf", r#""cr\rlf""#),
            ("tab\there", r#""tab\there""#),
            ("bell\u{7}", r#""bell\u0007""#),
            ("nul\u{0}", r#""nul\u0000""#),
            ("esc\u{1b}[31m", r#""esc\u001B[31m""#),
            ("del\u{7f}", r#""del\u007F""#),
            ("c1\u{85}", r#""c1\u0085""#),
            ("${attr.kernel.name}", r#""$${attr.kernel.name}""#),
            ("${NOMAD_META_task_id}", r#""$${NOMAD_META_task_id}""#),
            ("%{if true}x%{endif}", r#""%%{if true}x%%{endif}""#),
            ("$${already}", r#""$$${already}""#),
            ("%%{already}", r#""%%%{already}""#),
            ("cost: $5, 100%", r#""cost: $5, 100%""#),
            ("${", r#""$${""#),
            ("$", r#""$""#),
            ("{}", r#""{}""#),
            ("unicode é ✓ 🚀", r#""unicode é ✓ 🚀""#),
            (
                r#"x ${attr.kernel.name} "q" %{if}"#,
                r#""x $${attr.kernel.name} \"q\" %%{if}""#,
            ),
            ("\"\n}\njob \"evil\" {", r#""\"\n}\njob \"evil\" {""#),
        ];
        for (input, expected) in table {
            check(input, expected);
        }
    }

    #[test]
    fn identifiers() {
        for ok in ["LOG_LEVEL", "_x", "a1", "with-dash"] {
            assert!(is_hcl_identifier(ok), "{ok}");
        }
        for bad in ["", "1A", "A B", "A=B", "A\"", "${x}", "é"] {
            assert!(!is_hcl_identifier(bad), "{bad}");
        }
    }

    #[test]
    fn heredocs() {
        let table: &[(&str, &str)] = &[
            ("{\n  \"a\": 1\n}\n", "<<EOT\n{\n  \"a\": 1\n}\nEOT"),
            ("x ${y} %{z} \\ \"\n", "<<EOT\nx $${y} %%{z} \\ \"\nEOT"),
            ("EOT\n  EOT1\nb\n", "<<EOT2\nEOT\n  EOT1\nb\nEOT2"),
            // A line that starts with the marker ends the heredoc for the parser (found by
            // the round-trip property below).
            ("\nEOT}\n", "<<EOT1\n\nEOT}\nEOT1"),
            // Not representable as a heredoc: quoted instead.
            ("no newline at the end", "\"no newline at the end\""),
            ("bell\u{7}\n", "\"bell\\u0007\\n\""),
        ];
        for (input, expected) in table {
            assert_eq!(hcl_heredoc(input), *expected, "{input:?}");
        }
    }

    /// The literal reads back as the same string through the real jobspec parser, whatever the
    /// input: Nomad sees exactly what the operator wrote.
    fn round_trip(text: &str) -> Option<String> {
        round_trip_with(text, hcl_string)
    }

    fn round_trip_with(text: &str, literal: fn(&str) -> String) -> Option<String> {
        let job = format!(
            "job \"j\" {{\n  group \"g\" {{\n    task \"t\" {{\n      driver = \"docker\"\n      env {{\n        X = {}\n      }}\n    }}\n  }}\n}}\n",
            literal(text)
        );
        let json = crate::jobspec::parse_jobspec(&job, "round-trip.nomad.hcl").ok()?;
        json["Job"]["TaskGroups"][0]["Tasks"][0]["Env"]["X"]
            .as_str()
            .map(str::to_string)
    }

    #[test]
    fn heredocs_read_back_unchanged() {
        for text in ["\nEOT}\n", "EOT\n  EOT1\nb\n", "EOTX\n", " EOT \n", "x\n"] {
            assert_eq!(
                round_trip_with(text, hcl_heredoc).as_deref(),
                Some(text),
                "{text:?}"
            );
        }
    }

    #[test]
    fn literals_read_back_unchanged() {
        for text in [
            "",
            "x ${attr.kernel.name} \"q\" %{if}",
            "$${x} %%{y} $$ %% $ % { }",
            "a\\\"b\n\r\t\u{0}\u{1f}\u{7f}",
            "${NOMAD_META_task_id}",
            "é ✓ 🚀",
        ] {
            assert_eq!(round_trip(text).as_deref(), Some(text), "{text:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_string_reads_back_unchanged(text in "\\PC*|[\\x00-\\x1f$%{}\"\\\\a]*") {
            proptest::prop_assert_eq!(round_trip(&text), Some(text.clone()));
        }

        #[test]
        fn any_text_reads_back_unchanged_from_a_heredoc(text in "(\\PC*\n|[\t $%{}\"\\\\EOT\n]*\n)") {
            proptest::prop_assert_eq!(round_trip_with(&text, hcl_heredoc), Some(text.clone()));
        }
    }
}
