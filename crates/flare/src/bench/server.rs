//! The server under test: `flare serve` as a child process on its own data directory, pinned
//! to one core so the load generator does not steal its CPU (and the other way round).

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, bail};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

/// The core `flare serve` runs on; the load generator takes [`LOAD_CORE`].
pub const SERVER_CORE: usize = 1;
pub const LOAD_CORE: usize = 0;

/// A running `flare serve`. Killed when dropped; [`ServerProcess::stop`] stops it cleanly.
pub struct ServerProcess {
    child: Child,
    /// The FHIR base, e.g. `http://127.0.0.1:41234/fhir`.
    pub fhir_base: String,
    pub data_dir: PathBuf,
    /// Whether `taskset` pinned it to [`SERVER_CORE`].
    pub pinned: bool,
    pub stderr_file: PathBuf,
}

impl ServerProcess {
    /// Starts `flare serve --data-dir <data_dir> --listen 127.0.0.1:0` (this same binary, with
    /// `--config <config>` if given) and waits for its "listening on" line.
    pub async fn start(data_dir: &Path, config: Option<&Path>) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create {}", data_dir.display()))?;
        let exe = std::env::current_exe()
            .context("cannot find the flare executable to start the server")?;
        let pinned = command_works("taskset", &["-V"]).await;
        let mut command = if pinned {
            let mut command = Command::new("taskset");
            command.arg("-c").arg(SERVER_CORE.to_string()).arg(&exe);
            command
        } else {
            Command::new(&exe)
        };
        let stderr_file = data_dir.with_extension("server.log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_file)
            .with_context(|| format!("cannot create {}", stderr_file.display()))?;
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .args(
                config
                    .map(|path| [std::ffi::OsStr::new("--config"), path.as_os_str()])
                    .into_iter()
                    .flatten(),
            )
            // The defaults are what is measured: no config file or environment may change them.
            .env_remove("FLARE_CONFIG")
            .env_remove("FLARE_STORE")
            .env_remove("FLARE_LOG")
            .env_remove("FLARE_PUBLIC_URL")
            .env("FLARE_LOG_LEVEL", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        let mut child = command.spawn().context("cannot start `flare serve`")?;
        let stdout = child
            .stdout
            .take()
            .context("the server's stdout is not captured")?;
        let mut lines = BufReader::new(stdout).lines();
        let address = tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    return Ok::<_, std::io::Error>(Some(
                        rest.split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_owned(),
                    ));
                }
            }
            Ok(None)
        })
        .await;
        let address = match address {
            Ok(Ok(Some(address))) if !address.is_empty() => address,
            Ok(Ok(_)) => bail!(
                "`flare serve` exited before listening; see {}",
                stderr_file.display()
            ),
            Ok(Err(err)) => bail!("cannot read the server's output: {err}"),
            Err(_) => bail!(
                "`flare serve` did not start listening within 120 s; see {}",
                stderr_file.display()
            ),
        };
        // Keep reading so the server never writes into a full or closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            child,
            fhir_base: format!("http://{address}/fhir"),
            data_dir: data_dir.to_owned(),
            pinned,
            stderr_file,
        })
    }

    /// Sends SIGTERM and waits for the server to relay its last events and exit.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await;
            if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
                .await
                .is_ok()
            {
                return;
            }
        }
        let _ = self.child.kill().await;
    }
}

/// Pins every thread of this process (the load generator) to [`LOAD_CORE`]. Threads started
/// later inherit the mask. Returns whether it worked.
pub async fn pin_this_process() -> bool {
    let pid = std::process::id().to_string();
    command_works("taskset", &["-a", "-p", "-c", &LOAD_CORE.to_string(), &pid]).await
}

async fn command_works(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|status| status.success())
}

/// A keep-alive HTTP client for one simulated user.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(90))
        .timeout(Duration::from_secs(60))
        .build()
        .context("cannot build the HTTP client")
}
