//! Reading a routes directory: every `.yaml`/`.yml` file, parsed and indexed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::{did_you_mean, ConfigError};
use super::marks::Marks;
use super::schema::RouteFile;

/// One parsed route file.
#[derive(Debug)]
pub struct SourceFile {
    /// The path as shown in errors.
    pub display: Arc<str>,
    pub path: PathBuf,
    pub text: String,
    pub content: RouteFile,
    pub marks: Marks,
}

impl SourceFile {
    /// An error at the value found under `key_path` (e.g. `routes[2].backend`).
    pub fn error_at(&self, key_path: &str, message: impl Into<String>) -> ConfigError {
        let position = self.marks.find(key_path);
        ConfigError {
            file: self.display.clone(),
            line: position.line,
            column: position.column,
            message: message.into(),
        }
    }
}

/// The route files of `dir`, sorted by name so that declaration order
/// (which breaks precedence ties) does not depend on the file system.
/// Hidden files and directories are skipped: Kubernetes mounts a ConfigMap
/// as `..data/` plus symlinks, and only the symlinks are the files.
pub fn route_file_paths(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let entries = std::fs::read_dir(dir).map_err(|err| ConfigError {
        file: dir.display().to_string().into(),
        line: 0,
        column: 0,
        message: format!("cannot read routes directory: {err}"),
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let is_yaml = name.ends_with(".yaml") || name.ends_with(".yml");
            is_yaml && !name.starts_with('.') && path.is_file()
        })
        .collect();
    paths.sort();
    Ok(paths)
}

/// Reads and parses every route file of `dir`, reporting all failures.
pub fn load_dir(dir: &Path) -> Result<Vec<SourceFile>, Vec<ConfigError>> {
    let paths = route_file_paths(dir).map_err(|e| vec![e])?;
    if paths.is_empty() {
        return Err(vec![ConfigError {
            file: dir.display().to_string().into(),
            line: 0,
            column: 0,
            message: "no .yaml or .yml route files in this directory".into(),
        }]);
    }
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let display: Arc<str> = path.display().to_string().into();
        match std::fs::read_to_string(&path) {
            Ok(text) => match parse(display.clone(), &text) {
                Ok(content) => files.push(SourceFile {
                    display,
                    path,
                    marks: Marks::index(&text),
                    text,
                    content,
                }),
                Err(err) => errors.push(err),
            },
            Err(err) => errors.push(ConfigError {
                file: display,
                line: 0,
                column: 0,
                message: format!("cannot read file: {err}"),
            }),
        }
    }
    if errors.is_empty() {
        Ok(files)
    } else {
        Err(errors)
    }
}

/// Parses one file's text. A file of only comments is an empty file.
pub fn parse(display: Arc<str>, text: &str) -> Result<RouteFile, ConfigError> {
    let is_blank = text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#') || l.trim() == "---");
    if is_blank {
        return Ok(RouteFile::default());
    }
    serde_yaml::from_str(text).map_err(|err| {
        let (line, column) = err
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((1, 1));
        ConfigError {
            file: display,
            line,
            column,
            message: explain_serde_message(&err.to_string()),
        }
    })
}

/// serde's message, without the position it repeats, plus a suggestion
/// for a misspelt key.
fn explain_serde_message(message: &str) -> String {
    let message = match message.rfind(" at line ") {
        Some(cut) => &message[..cut],
        None => message,
    };
    // "routes[0]: unknown field `bakend`, expected one of `name`, `match`, ..."
    // (the key path before it is absent at the top level).
    const UNKNOWN: &str = "unknown field `";
    if let Some(start) = message.find(UNKNOWN) {
        let (key_path, rest) = (&message[..start], &message[start + UNKNOWN.len()..]);
        if let Some((field, expected)) = rest.split_once('`') {
            let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
            let hint = did_you_mean(field, candidates.iter().copied());
            return format!(
                "{key_path}unknown key `{field}`{hint}; {}",
                expected.trim_start_matches(", ")
            );
        }
    }
    message.to_string()
}

/// Parsed files kept between reloads: a file whose text did not change is
/// not parsed again (its YAML is read twice, for values and positions,
/// which dominates a reload of a large table).
#[derive(Default)]
pub struct ParseCache {
    files: std::collections::HashMap<PathBuf, Arc<SourceFile>>,
}

/// `load_dir`, reusing the cached parse of every unchanged file.
pub fn load_dir_cached(
    dir: &Path,
    cache: &mut ParseCache,
) -> Result<Vec<Arc<SourceFile>>, Vec<ConfigError>> {
    let paths = route_file_paths(dir).map_err(|e| vec![e])?;
    if paths.is_empty() {
        return load_dir(dir).map(|files| files.into_iter().map(Arc::new).collect());
    }
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let display: Arc<str> = path.display().to_string().into();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) => {
                errors.push(ConfigError {
                    file: display,
                    line: 0,
                    column: 0,
                    message: format!("cannot read file: {err}"),
                });
                continue;
            }
        };
        if let Some(cached) = cache.files.get(&path).filter(|cached| cached.text == text) {
            files.push(cached.clone());
            continue;
        }
        match parse(display.clone(), &text) {
            Ok(content) => {
                let file = Arc::new(SourceFile {
                    display,
                    path: path.clone(),
                    marks: Marks::index(&text),
                    text,
                    content,
                });
                cache.files.insert(path, file.clone());
                files.push(file);
            }
            Err(err) => errors.push(err),
        }
    }
    cache
        .files
        .retain(|path, _| files.iter().any(|f| &f.path == path));
    if errors.is_empty() {
        Ok(files)
    } else {
        Err(errors)
    }
}
