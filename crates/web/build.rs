//! Builds the dashboard in `web/` (npm, pinned by its lockfile) into OUT_DIR and generates the
//! table of embedded assets, so one `cargo build` yields a binary that serves the dashboard
//! with no network and no files beside it.
//!
//! `FLARE_WEB_DIST=DIR` embeds an already-built folder instead; when npm is missing the binary
//! gets a page explaining how to build the dashboard (and the build prints a warning).

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let web = manifest.join("../../web");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    for input in [
        "src",
        "index.html",
        "package.json",
        "package-lock.json",
        "vite.config.ts",
        "tsconfig.json",
    ] {
        println!("cargo:rerun-if-changed={}", web.join(input).display());
    }
    println!("cargo:rerun-if-env-changed=FLARE_WEB_DIST");

    let dist = match env::var_os("FLARE_WEB_DIST") {
        Some(dir) => Some(PathBuf::from(dir)),
        None => build_with_npm(&web, &out.join("web-dist")),
    };
    let mut assets = Vec::new();
    if let Some(dist) = &dist {
        collect(dist, dist, &mut assets);
    }
    assets.sort();
    let mut table = String::from(
        "/// (path, bytes, content type) of every embedded asset.\npub static ASSETS: &[(&str, &[u8], &str)] = &[\n",
    );
    for (route, file) in &assets {
        table.push_str(&format!(
            "    ({route:?}, include_bytes!({file:?}), {:?}),\n",
            content_type(route)
        ));
    }
    table.push_str("];\n");
    table.push_str(&format!("/// Whether the dashboard was built (false: only the fallback page).\npub const BUILT: bool = {};\n", !assets.is_empty()));
    fs::write(out.join("assets.rs"), table).expect("OUT_DIR is writable");
}

fn build_with_npm(web: &Path, dist: &Path) -> Option<PathBuf> {
    let npm = |args: &[&str]| Command::new("npm").args(args).current_dir(web).status();
    if !web.join("node_modules/.package-lock.json").exists() {
        match npm(&["ci", "--no-audit", "--no-fund", "--loglevel=error"]) {
            Ok(status) if status.success() => {}
            Ok(status) => {
                println!(
                    "cargo:warning=dashboard not built: `npm ci` in web/ failed ({status}); the server will serve a page saying so"
                );
                return None;
            }
            Err(error) => {
                println!(
                    "cargo:warning=dashboard not built: npm not found ({error}); install Node.js and npm, then rebuild"
                );
                return None;
            }
        }
    }
    let out_dir = dist.to_string_lossy().into_owned();
    match npm(&[
        "run",
        "build",
        "--",
        "--outDir",
        &out_dir,
        "--logLevel",
        "warn",
    ]) {
        Ok(status) if status.success() => Some(dist.to_path_buf()),
        Ok(status) => {
            println!(
                "cargo:warning=dashboard not built: `npm run build` in web/ failed ({status})"
            );
            None
        }
        Err(error) => {
            println!("cargo:warning=dashboard not built: npm not found ({error})");
            None
        }
    }
}

fn collect(root: &Path, dir: &Path, assets: &mut Vec<(String, String)>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(root, &path, assets);
        } else if let Ok(relative) = path.strip_prefix(root) {
            let route = format!("/{}", relative.to_string_lossy().replace('\\', "/"));
            assets.push((route, path.to_string_lossy().into_owned()));
        }
    }
}

fn content_type(route: &str) -> &'static str {
    match route.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("json") => "application/json",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        _ => "application/octet-stream",
    }
}
