//! The plugin binary as a child process: one builder for every spawn (the
//! binary, its arguments and config file, an environment without the
//! runner's PRISM_*/REDIS_*/VAULT_* variables, stderr captured, optional
//! `RLIMIT_NOFILE`), a bounded run to completion, and a running child with
//! its log that waits (bounded) until it accepts or reports SERVING.
//!
//! The in-process server and its clients are not here (`Plugin` in mod.rs).

use std::{
    ffi::OsStr,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

/// The plugin binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_redis-cache-plugin");

/// How long a child may take to accept or report SERVING.
const START_WITHIN: Duration = Duration::from_secs(30);

/// The runner's variables the plugin would read (its config overlay); none
/// may leak into a test's child (BAO_* too: OpenBao's spelling of VAULT_*).
const PLUGIN_ENV_PREFIXES: [&str; 4] = ["PRISM_", "REDIS_", "VAULT_", "BAO_"];

/// `control_plane` on `port` of loopback with `extra` flow pairs
/// (`"drain_timeout: 10s"`) and `log.level`, as YAML lines.
pub fn loopback_yaml(port: u16, extra: &str, level: &str) -> String {
    let extra = extra.trim_start_matches([',', ' ']);
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(", {extra}")
    };
    format!(
        "control_plane: {{ port: {port}, listen: 127.0.0.1{extra} }}\nlog: {{ level: {level} }}\n"
    )
}

/// Writes `yaml` to `dir/plugin.yaml` and returns its path.
pub fn write_config(dir: &Path, yaml: &str) -> PathBuf {
    let path = dir.join("plugin.yaml");
    std::fs::write(&path, yaml).expect("write plugin config");
    path
}

/// A command line for the plugin binary, built up before it runs.
pub struct PluginCommand {
    cmd: Command,
}

impl Default for PluginCommand {
    fn default() -> Self {
        Self::new()
    }
}

impl PluginCommand {
    /// The binary with the runner's plugin variables removed.
    pub fn new() -> Self {
        Self::wrapped(Command::new(BIN))
    }

    /// The binary under `prlimit --nofile=n:n` (prlimit execs it, so the
    /// child's pid is the plugin's).
    pub fn with_nofile(n: u32) -> Self {
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={n}:{n}")).arg(BIN);
        Self::wrapped(cmd)
    }

    fn wrapped(mut cmd: Command) -> Self {
        for (name, _) in std::env::vars_os() {
            let plugin_var = name
                .to_str()
                .is_some_and(|n| PLUGIN_ENV_PREFIXES.iter().any(|p| n.starts_with(p)));
            if plugin_var {
                cmd.env_remove(name);
            }
        }
        cmd.stdin(Stdio::null());
        Self { cmd }
    }

    /// `--config <path>`.
    pub fn config(&mut self, path: impl AsRef<OsStr>) -> &mut Self {
        self.cmd.arg("--config").arg(path);
        self
    }

    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Self {
        self.cmd.arg(arg);
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(&mut self, args: I) -> &mut Self {
        self.cmd.args(args);
        self
    }

    pub fn env(&mut self, name: &str, value: impl AsRef<OsStr>) -> &mut Self {
        self.cmd.env(name, value);
        self
    }

    pub fn envs<K: AsRef<OsStr>, V: AsRef<OsStr>>(
        &mut self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> &mut Self {
        self.cmd.envs(vars);
        self
    }

    /// No inherited environment at all, only what the test sets afterwards.
    pub fn env_clear(&mut self) -> &mut Self {
        self.cmd.env_clear();
        self
    }

    /// Spawns the child with `stdout` and stderr piped.
    fn spawn(&mut self, stdout: Stdio) -> Child {
        let child = self.cmd.stdout(stdout).stderr(Stdio::piped()).spawn();
        child.expect("spawn plugin")
    }

    /// Runs to completion with stdout and stderr captured.
    pub fn output(&mut self) -> std::io::Result<Output> {
        self.cmd.output()
    }

    /// Runs with stdout and stderr captured, killed after `within` (a
    /// config wrongly accepted would serve forever).
    pub fn run_bounded(&mut self, within: Duration) -> Finished {
        let mut child = self.spawn(Stdio::piped());
        let deadline = Instant::now() + within;
        let mut exited = false;
        while Instant::now() < deadline {
            if child.try_wait().expect("try_wait").is_some() {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let output = child.wait_with_output().expect("plugin output");
        Finished { output, exited }
    }

    /// Starts the child: stdout discarded, stderr to a file (a file, not a
    /// pipe: a plugin logging under attack never waits for the test).
    pub fn start(&mut self) -> Running {
        let stderr = tempfile::NamedTempFile::new().expect("stderr file");
        let file = stderr.reopen().expect("stderr file");
        let child = self
            .cmd
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn plugin");
        Running { child, stderr }
    }

    /// Starts the child and waits until its health probe reports SERVING
    /// on `addr` (`probe` adds flags such as `--tls`).
    pub fn start_serving(&mut self, addr: &str, probe: &[&str]) -> Running {
        let mut running = self.start();
        running.wait_serving(addr, probe);
        running
    }
}

/// A child run to completion (or killed at its bound).
pub struct Finished {
    pub output: Output,
    /// False when the bound passed and the child was killed.
    pub exited: bool,
}

impl Finished {
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
}

/// `redis-cache-plugin health` against `addr` with `extra` flags.
pub fn probe(addr: &str, extra: &[&str]) -> Output {
    PluginCommand::new()
        .args(["health", "--addr", addr, "--timeout", "2s"])
        .args(extra)
        .output()
        .expect("run health")
}

/// A running plugin child, killed on drop, its stderr in a file.
pub struct Running {
    child: Child,
    stderr: tempfile::NamedTempFile,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (bounded) for a log line containing `needle`.
    pub fn line_with(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + START_WITHIN;
        loop {
            let log = self.log();
            if let Some(l) = log.lines().find(|l| l.contains(needle)) {
                return l.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?}; got:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything on stderr so far.
    pub fn log(&mut self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap_or_default()
    }

    /// Polls the built-in probe until SERVING; panics with the log after
    /// the start-up bound.
    pub fn wait_serving(&mut self, addr: &str, probe_flags: &[&str]) {
        let deadline = Instant::now() + START_WITHIN;
        while !probe(addr, probe_flags).status.success() {
            self.assert_alive_before(deadline, "SERVING");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `addr` accepts TCP connections; panics with the log
    /// after the start-up bound.
    pub fn wait_accepting(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + START_WITHIN;
        while std::net::TcpStream::connect(addr).is_err() {
            self.assert_alive_before(deadline, "accepting");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn assert_alive_before(&mut self, deadline: Instant, state: &str) {
        let exited = self.child.try_wait().expect("try_wait");
        assert!(
            exited.is_none() && Instant::now() < deadline,
            "plugin not {state} (exit {exited:?}); stderr:\n{}",
            self.log()
        );
    }

    /// Waits up to `within` for the child to exit; kills it after that.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }

    /// Sends SIGTERM, the orchestrator's stop.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success(), "kill -TERM {}", self.child.id());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
