//! Where the official R4 examples are, for the tests that read them.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The examples folder from `FLARE_R4_EXAMPLES` (the package folder or its `package/`).
pub fn examples_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("FLARE_R4_EXAMPLES")?);
    let nested = dir.join("package");
    Some(if nested.is_dir() { nested } else { dir })
}

/// The example resources in `dir`, sorted (npm's `package.json` and hidden files left out).
pub fn example_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("FLARE_R4_EXAMPLES is readable")
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.extension().is_some_and(|ext| ext == "json")
                && path
                    .file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name != "package.json" && !name.starts_with('.'))
        })
        .collect();
    files.sort();
    files
}
