//! The file side of `render` and `validate`: reading templates, comparing an output directory
//! with what would be written, and writing job files atomically.
//!
//! Everything else in `render/` is pure; all of its I/O is here.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use super::engine::{Templates, AGENT_TEMPLATE, COORDINATOR_TEMPLATE};
use super::RenderError;

/// One file `render` would write: its name inside the output directory and its contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputFile {
    pub name: String,
    pub contents: String,
}

/// How a file in the output directory differs from what `render` would write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    Missing,
    /// Present with other contents; the first line that differs (1-based).
    Differs {
        line: usize,
    },
    /// A generated-looking file no agent type produces any more.
    Stale,
}

/// Reads and compiles `coordinator.nomad.hcl.hbs` and `agent.nomad.hcl.hbs` from `dir`.
pub fn load_templates(dir: &Path) -> Result<Templates, RenderError> {
    let read = |name: &str| {
        let path = dir.join(name);
        fs::read_to_string(&path).map_err(|e| RenderError::Template {
            template: path.display().to_string(),
            message: format!("{}: cannot read template: {e}", path.display()),
        })
    };
    let coordinator = read(COORDINATOR_TEMPLATE)?;
    let agent = read(AGENT_TEMPLATE)?;
    Templates::from_sources(&coordinator, &agent, &dir.display().to_string())
}

/// Files in `out` whose names end in `suffix` (`-agent.nomad.hcl`) but are not in `produced`:
/// jobs of agent types that no longer exist. A missing directory has none.
pub fn stale_files(
    out: &Path,
    produced: &[OutputFile],
    suffix: &str,
) -> Result<Vec<String>, RenderError> {
    let entries = match fs::read_dir(out) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(out, e)),
    };
    let mut stale = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error(out, e))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
        if is_file
            && name.ends_with(suffix)
            && name.len() > suffix.len()
            && !produced.iter().any(|f| f.name == name)
        {
            stale.push(name);
        }
    }
    stale.sort();
    Ok(stale)
}

/// Compares `out` with `files` (plus stale files ending in `stale_suffix`); returns each file
/// name that differs, in a stable order.
pub fn compare(
    out: &Path,
    files: &[OutputFile],
    stale_suffix: &str,
) -> Result<Vec<(String, Difference)>, RenderError> {
    let mut differences = Vec::new();
    for file in files {
        let path = out.join(&file.name);
        match fs::read(&path) {
            Ok(existing) if existing == file.contents.as_bytes() => {}
            Ok(existing) => {
                let existing = String::from_utf8_lossy(&existing);
                differences.push((
                    file.name.clone(),
                    Difference::Differs {
                        line: first_difference(&existing, &file.contents),
                    },
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                differences.push((file.name.clone(), Difference::Missing))
            }
            Err(e) => return Err(io_error(&path, e)),
        }
    }
    for name in stale_files(out, files, stale_suffix)? {
        differences.push((name, Difference::Stale));
    }
    Ok(differences)
}

/// Whether `path` already holds exactly `contents`.
pub fn is_unchanged(path: &Path, contents: &str) -> bool {
    fs::read(path).is_ok_and(|existing| existing == contents.as_bytes())
}

/// Writes `contents` to `path` through a temporary file in the same directory and a rename,
/// so a reader (or an interrupted render) never sees a half-written job.
pub fn write_atomically(path: &Path, contents: &str) -> Result<(), RenderError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp: PathBuf = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = fs::File::create(&temp)?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&temp);
        io_error(path, e)
    })
}

/// Creates the output directory (and parents) when missing.
pub fn create_dir(out: &Path) -> Result<(), RenderError> {
    fs::create_dir_all(out).map_err(|e| io_error(out, e))
}

/// Removes a stale job file.
pub fn remove(path: &Path) -> Result<(), RenderError> {
    fs::remove_file(path).map_err(|e| io_error(path, e))
}

fn io_error(path: &Path, source: io::Error) -> RenderError {
    RenderError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The first 1-based line where `a` and `b` differ (one past the shorter text's end when one
/// is a prefix of the other).
fn first_difference(a: &str, b: &str) -> usize {
    let mut lines_a = a.split_inclusive('\n');
    let mut lines_b = b.split_inclusive('\n');
    let mut line = 1;
    loop {
        match (lines_a.next(), lines_b.next()) {
            (Some(x), Some(y)) if x == y => line += 1,
            _ => return line,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, contents: &str) -> OutputFile {
        OutputFile {
            name: name.into(),
            contents: contents.into(),
        }
    }

    #[test]
    fn first_difference_is_one_based() {
        assert_eq!(first_difference("a\nb\n", "a\nc\n"), 2);
        assert_eq!(first_difference("a\n", "a\nb\n"), 2);
        assert_eq!(first_difference("x", "y"), 1);
    }

    #[test]
    fn compare_lists_differing_missing_and_stale_files() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let files = [
            file("coordinator.nomad.hcl", "c\n"),
            file("a-agent.nomad.hcl", "a\n"),
            file("b-agent.nomad.hcl", "b\n"),
        ];
        assert_eq!(
            compare(dir.path(), &files, "-agent.nomad.hcl")?,
            files
                .iter()
                .map(|f| (f.name.clone(), Difference::Missing))
                .collect::<Vec<_>>()
        );
        for f in &files {
            write_atomically(&dir.path().join(&f.name), &f.contents)?;
        }
        assert_eq!(compare(dir.path(), &files, "-agent.nomad.hcl")?, vec![]);
        write_atomically(&dir.path().join("a-agent.nomad.hcl"), "a\nmore\n")?;
        write_atomically(&dir.path().join("old-agent.nomad.hcl"), "old\n")?;
        write_atomically(&dir.path().join("notes.txt"), "kept\n")?;
        assert_eq!(
            compare(dir.path(), &files, "-agent.nomad.hcl")?,
            vec![
                (
                    "a-agent.nomad.hcl".to_string(),
                    Difference::Differs { line: 2 }
                ),
                ("old-agent.nomad.hcl".to_string(), Difference::Stale),
            ]
        );
        // No temporary files are left behind.
        let names: Vec<String> = fs::read_dir(dir.path())?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        assert!(names.iter().all(|n| !n.contains(".tmp-")), "{names:?}");
        Ok(())
    }
}
