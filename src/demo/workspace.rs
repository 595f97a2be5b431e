//! The demo's directory: routes and migration state, temporary unless given.

use std::path::PathBuf;
use std::time::SystemTime;

use super::DemoError;

/// The directory holding the demo's routes and state.
pub(crate) struct Workspace {
    pub(crate) base: PathBuf,
    /// Made by the demo, so removed with it.
    is_temporary: bool,
}

impl Workspace {
    pub(crate) fn new(state_dir: Option<PathBuf>) -> Result<Workspace, DemoError> {
        let (base, is_temporary) = match state_dir {
            Some(dir) => (dir, false),
            None => {
                let nanos = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos());
                let name = format!("strangler-demo-{}-{nanos}", std::process::id());
                (std::env::temp_dir().join(name), true)
            }
        };
        std::fs::create_dir_all(&base).map_err(|source| DemoError::Files {
            path: base.clone(),
            source,
        })?;
        Ok(Workspace { base, is_temporary })
    }

    pub(crate) fn routes_dir(&self) -> PathBuf {
        self.base.join("routes")
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if self.is_temporary {
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }
}
