//! Finds and loads the ONNX Runtime shared library.
//!
//! `ort` is built with `load-dynamic`, so nothing is downloaded at build time and the library is
//! opened at run time from the first of: the `--onnxruntime` flag, `ORT_DYLIB_PATH`, or the
//! `.onnxruntime/` folder that `scripts/fetch-onnxruntime` fills, looked up from the working
//! directory and from the executable's folder upwards.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;

/// The ONNX Runtime release this project is built and tested against.
pub const ONNXRUNTIME_VERSION: &str = "1.31.1";

/// Folder, relative to the repository root, where `scripts/fetch-onnxruntime` puts the library.
pub const LOCAL_RUNTIME_DIR: &str = ".onnxruntime";

/// ONNX Runtime loading failures.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime library not found: no --onnxruntime flag, no ORT_DYLIB_PATH, and no \
         {LOCAL_RUNTIME_DIR}/libonnxruntime.so* in the working directory or beside the executable; \
         run `scripts/fetch-onnxruntime` (installs onnxruntime {ONNXRUNTIME_VERSION} from PyPI into \
         {LOCAL_RUNTIME_DIR}/) or pass --onnxruntime /path/to/libonnxruntime.so"
    )]
    NotFound,
    #[error("ONNX Runtime library {path} does not exist (set by {source_name})")]
    Missing { path: PathBuf, source_name: &'static str },
    #[error("cannot load ONNX Runtime from {path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error(
        "ONNX Runtime is already loaded from {loaded}; a process can load only one library, so {requested} cannot be used"
    )]
    AlreadyLoaded { loaded: PathBuf, requested: PathBuf },
}

struct LoadedRuntime {
    path: PathBuf,
    environment: Environment,
}

static RUNTIME: OnceLock<Result<LoadedRuntime, String>> = OnceLock::new();

/// Resolves the library path in priority order: `flag`, then `ORT_DYLIB_PATH`, then the local
/// folder.
pub fn locate_library(flag: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    if let Some(path) = flag {
        return existing(path.to_path_buf(), "--onnxruntime");
    }
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return existing(PathBuf::from(path), "ORT_DYLIB_PATH");
    }
    search_upwards(LOCAL_RUNTIME_DIR)
        .into_iter()
        .find_map(|dir| find_library_in(&dir))
        .ok_or(RuntimeError::NotFound)
}

/// Loads the library at `path` once per process and returns the shared environment.
pub fn environment(path: &Path) -> Result<Environment, RuntimeError> {
    let loaded = RUNTIME.get_or_init(|| {
        let load = || -> Result<Environment, String> {
            ort::init_from(path)
                .map_err(|e| e.to_string())?
                .with_name("thrombseg")
                .build()
                .map_err(|e| e.to_string())
        };
        load().map(|environment| LoadedRuntime {
            path: path.to_path_buf(),
            environment,
        })
    });

    match loaded {
        Ok(runtime) if runtime.path == path => Ok(runtime.environment.clone()),
        Ok(runtime) => Err(RuntimeError::AlreadyLoaded {
            loaded: runtime.path.clone(),
            requested: path.to_path_buf(),
        }),
        Err(message) => Err(RuntimeError::Load {
            path: path.to_path_buf(),
            message: message.clone(),
        }),
    }
}

fn existing(path: PathBuf, source_name: &'static str) -> Result<PathBuf, RuntimeError> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(RuntimeError::Missing { path, source_name })
    }
}

/// Candidate locations of `relative`: below the working directory and below every ancestor of
/// the executable's folder, so a binary in `target/release/` finds the repository's copy.
pub(crate) fn search_upwards(relative: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        dirs.push(cwd.join(relative));
    }
    if let Ok(exe) = std::env::current_exe() {
        dirs.extend(exe.ancestors().skip(1).map(|dir| dir.join(relative)));
    }
    dirs
}

/// Returns the versioned library in `dir`, preferring the pinned version.
fn find_library_in(dir: &Path) -> Option<PathBuf> {
    let pinned = dir.join(format!("libonnxruntime.so.{ONNXRUNTIME_VERSION}"));
    if pinned.is_file() {
        return Some(pinned);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("libonnxruntime.so"))
        })
        .collect();
    found.sort();
    found.pop()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_pointing_nowhere_names_the_flag() {
        let error = locate_library(Some(Path::new("/nonexistent/libonnxruntime.so"))).unwrap_err();

        let message = error.to_string();
        assert!(message.contains("--onnxruntime"), "{message}");
        assert!(message.contains("/nonexistent/libonnxruntime.so"), "{message}");
    }

    #[test]
    fn library_found_in_local_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("libonnxruntime.so.1.2.3"), b"").unwrap();

        let found = find_library_in(dir.path()).unwrap();

        assert_eq!(found, dir.path().join("libonnxruntime.so.1.2.3"));
    }

    #[test]
    fn not_found_message_says_how_to_fetch() {
        let message = RuntimeError::NotFound.to_string();

        assert!(message.contains("scripts/fetch-onnxruntime"), "{message}");
        assert!(message.contains("ORT_DYLIB_PATH"), "{message}");
    }
}
