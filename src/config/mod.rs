//! Route files: the YAML schema, loading a routes directory, validation with
//! FILE:LINE:COL errors, and compilation into an immutable `Snapshot`.
//!
//! Three stages, three types: `schema` mirrors the YAML, `compile` checks it
//! and builds the routing types, the `Snapshot` serves requests.
//! `json_schema` derives the JSON Schema that editors use from `schema`.

mod compile;
mod error;
mod json_schema;
mod load;
mod marks;
mod route;
pub mod schema;
mod server;
mod traffic;
mod transform;
pub mod values;

use std::path::Path;

pub use self::compile::{compile, compile_refs, CompileContext, Compiled};
pub use self::error::{did_you_mean, ConfigError, ConfigErrors};
pub use self::json_schema::route_file_schema;
pub use self::load::{load_dir, load_dir_cached, route_file_paths, ParseCache, SourceFile};

/// Reads, validates and compiles the routes directory `dir`.
pub fn load(dir: &Path, ctx: &CompileContext) -> Result<Compiled, ConfigErrors> {
    let files = load_dir(dir).map_err(ConfigErrors)?;
    compile(&files, ctx).map_err(ConfigErrors)
}

/// `load`, parsing only the files that changed since `cache` saw them.
pub fn load_cached(
    dir: &Path,
    ctx: &CompileContext,
    cache: &mut ParseCache,
) -> Result<Compiled, ConfigErrors> {
    let files = load_dir_cached(dir, cache).map_err(ConfigErrors)?;
    let refs: Vec<&SourceFile> = files.iter().map(|f| &**f).collect();
    compile_refs(&refs, ctx).map_err(ConfigErrors)
}

/// Parses and compiles one route file held in memory, as `load` does for a
/// directory. The file must be complete (backends and `default` included).
/// The fuzz targets in `fuzz/` use it; it needs no file system.
pub fn compile_text(
    name: &str,
    text: &str,
    ctx: &CompileContext,
) -> Result<Compiled, ConfigErrors> {
    let display: std::sync::Arc<str> = name.into();
    let content = load::parse(display.clone(), text).map_err(|err| ConfigErrors(vec![err]))?;
    let file = SourceFile {
        display,
        path: name.into(),
        text: text.to_owned(),
        content,
        marks: marks::Marks::index(text),
    };
    compile(&[file], ctx).map_err(ConfigErrors)
}
