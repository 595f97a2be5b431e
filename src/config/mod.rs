//! Route files: the YAML schema, loading a routes directory, validation with
//! FILE:LINE:COL errors, and compilation into an immutable `Snapshot`.
//!
//! Three stages, three types: `schema` mirrors the YAML, `compile` checks it
//! and builds the routing types, the `Snapshot` serves requests.

mod compile;
mod error;
mod load;
mod marks;
mod route;
pub mod schema;
mod server;
mod traffic;
pub mod values;

use std::path::Path;

pub use self::compile::{compile, CompileContext, Compiled};
pub use self::error::{did_you_mean, ConfigError, ConfigErrors};
pub use self::load::{load_dir, route_file_paths, SourceFile};

/// Reads, validates and compiles the routes directory `dir`.
pub fn load(dir: &Path, ctx: &CompileContext) -> Result<Compiled, ConfigErrors> {
    let files = load_dir(dir).map_err(ConfigErrors)?;
    compile(&files, ctx).map_err(ConfigErrors)
}
