//! The command line as operators meet it: `--help` names every flag and
//! environment variable, `--version`, `check-config` never prints a secret,
//! and a bad config or argument is one line and exit 64.

mod common;

use std::collections::HashMap;

use common::plugin::PluginCommand;
use redis_cache_plugin::config::{self, Config};

const EX_USAGE: i32 = 64;

fn plugin() -> PluginCommand {
    let mut cmd = PluginCommand::new();
    // Only what each test sets: the overlay must not pick up the runner's env.
    cmd.env_clear();
    cmd
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn config_file(yaml: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), yaml).expect("write config");
    file
}

#[test]
fn help_lists_every_flag_and_env_var() {
    let out = plugin().arg("--help").output().expect("run --help");
    assert!(out.status.success(), "{out:?}");
    let help = stdout(&out);
    for var in config::ENV_VARS {
        assert!(help.contains(var.name), "--help lacks {var:?}:\n{help}");
        assert!(help.contains(var.field), "--help lacks {var:?}:\n{help}");
    }
    for word in [
        config::CONFIG_ENV,
        "--config",
        "--grpc-port",
        "--version",
        "serve",
        "check-config",
        "health",
    ] {
        assert!(help.contains(word), "--help lacks {word}:\n{help}");
    }
    let out = plugin().args(["health", "--help"]).output().expect("run");
    let help = stdout(&out);
    for flag in ["--addr", "--service", "--timeout", "SERVING"] {
        assert!(help.contains(flag), "health --help lacks {flag}:\n{help}");
    }
}

#[test]
fn grpc_port_overrides_the_config_file_and_the_environment() {
    let file = config_file("control_plane:\n  port: 9300\n");
    let path = file.path().to_str().expect("utf-8");
    let effective = |args: &[&str]| {
        let out = plugin()
            .args(["--config", path])
            .args(args)
            .arg("check-config")
            .env("PRISM_PLUGIN_PORT", "9301")
            .output()
            .expect("run check-config");
        assert!(out.status.success(), "{args:?}: {out:?}");
        let yaml: serde_norway::Value = serde_norway::from_str(&stdout(&out)).expect("YAML");
        yaml["control_plane"]["port"].as_u64()
    };
    // The environment over the file, as before; --grpc-port over both.
    assert_eq!(effective(&[]), Some(9301));
    assert_eq!(effective(&["--grpc-port", "9302"]), Some(9302));
    let out = plugin()
        .args(["--grpc-port", "70000"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(EX_USAGE), "{out:?}");
}

#[test]
fn version_prints_the_crate_version() {
    let out = plugin().arg("--version").output().expect("run --version");
    assert!(out.status.success());
    assert_eq!(
        stdout(&out).trim(),
        format!("redis-cache-plugin {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_config_redacts_secrets_from_file_and_env() {
    let (file_secret, env_password, env_token, env_secret_id) = (
        common::random_secret(),
        common::random_secret(),
        common::random_secret(),
        common::random_secret(),
    );
    let file = config_file(&format!(
        "backend:\n  username: cache\n  password: {file_secret}\n"
    ));
    let out = plugin()
        .arg("check-config")
        .env(config::CONFIG_ENV, file.path())
        .env("REDIS_PASSWORD", &env_password)
        .env("VAULT_TOKEN", &env_token)
        .env("VAULT_SECRET_ID", &env_secret_id)
        .output()
        .expect("run check-config");
    assert!(out.status.success(), "{out:?}");
    let (text, err) = (stdout(&out), stderr(&out));
    for secret in [&file_secret, &env_password, &env_token, &env_secret_id] {
        assert!(!text.contains(secret.as_str()) && !err.contains(secret.as_str()));
    }
    let effective: serde_norway::Value = serde_norway::from_str(&text).expect("YAML out");
    assert_eq!(
        effective["backend"]["password"].as_str(),
        Some("[redacted]")
    );
    assert_eq!(
        effective["vault"]["auth"]["token"].as_str(),
        Some("[redacted]")
    );
    // Set but redacted: a leak check on a value that was never read proves nothing.
    assert_eq!(
        effective["vault"]["auth"]["secret_id"].as_str(),
        Some("[redacted]")
    );
    assert_eq!(effective["backend"]["username"].as_str(), Some("cache"));
}

#[test]
fn bad_config_is_one_line_naming_the_field_and_exit_64() {
    let cases = [
        ("backend:\n  pool_size: many\n", vec![], "backend.pool_size"),
        ("backend:\n  adress: x\n", vec![], "adress"),
        (
            "control_plane:\n  drain_timeout: soon\n",
            vec![],
            "control_plane.drain_timeout",
        ),
        ("", vec![("REDIS_DATABASE", "x")], "REDIS_DATABASE"),
    ];
    for (yaml, env, field) in cases {
        let file = config_file(yaml);
        for sub in ["check-config", "serve"] {
            let out = plugin()
                .args(["--config", file.path().to_str().expect("utf-8")])
                .arg(sub)
                .envs(env.iter().copied())
                .output()
                .expect("run");
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(EX_USAGE), "{sub} {yaml:?}: {err}");
            assert_eq!(err.lines().count(), 1, "one line: {err}");
            assert!(err.contains(field), "{sub}: {err} should name {field}");
            assert!(stdout(&out).is_empty());
        }
    }
}

#[test]
fn missing_config_file_and_bad_arguments_exit_64() {
    let out = plugin()
        .args(["--config", "/nonexistent/plugin.yaml", "check-config"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(EX_USAGE), "{out:?}");
    assert!(stderr(&out).contains("/nonexistent/plugin.yaml"));
    for args in [&["--bogus"][..], &["health", "--timeout", "soon"]] {
        let out = plugin().args(args).output().expect("run");
        assert_eq!(out.status.code(), Some(EX_USAGE), "{args:?}: {out:?}");
    }
}

// === ENV_VARS is the overlay, documented ===

/// A valid value for each overlay variable, different from its default.
/// A new variable needs a line here, which keeps `--help` and the deploy
/// checks honest.
fn sample(var: &str) -> Option<&'static str> {
    Some(match var {
        "REDIS_ADDRESS" => "127.0.0.1:7001",
        "REDIS_TOPOLOGY" => "cluster",
        "REDIS_ADDRESSES" => "127.0.0.1:7000, 127.0.0.1:7001",
        "REDIS_SENTINEL_MASTER" => "cache-master",
        "REDIS_SENTINEL_USERNAME" => "watcher",
        "REDIS_USERNAME" => "someone",
        "REDIS_PASSWORD" | "REDIS_SENTINEL_PASSWORD" | "VAULT_TOKEN" | "VAULT_SECRET_ID" => {
            "not-empty"
        }
        "REDIS_DATABASE" => "3",
        "REDIS_POOL_SIZE" => "7",
        "REDIS_KEY_PREFIX" => "other:",
        "REDIS_VAULT_ENABLED" => "true",
        "REDIS_VAULT_PATH" => "db/creds/other",
        "REDIS_NEAR_CACHE_ENABLED" => "true",
        "REDIS_NEAR_CACHE_MAX_BYTES" => "1048576",
        "REDIS_NEAR_CACHE_MAX_TTL" => "5s",
        "PRISM_LOG_LEVEL" => "debug",
        "PRISM_PLUGIN_PORT" => "9191",
        "PRISM_PLUGIN_LISTEN" => "0.0.0.0",
        "VAULT_ADDR" => "http://127.0.0.1:8299",
        "VAULT_NAMESPACE" => "team-a",
        "VAULT_ROLE_ID" => "role-1",
        _ => return None,
    })
}

/// What a variable needs set with it to make a valid config: a topology
/// reads its own address field.
fn companions(var: &str) -> &'static [(&'static str, &'static str)] {
    match var {
        "REDIS_TOPOLOGY" => &[("REDIS_ADDRESSES", "127.0.0.1:7000")],
        "REDIS_ADDRESSES" => &[("REDIS_TOPOLOGY", "cluster")],
        _ => &[],
    }
}

/// Variables naming a file (CA bundles, client certificates and keys).
fn file_valued(var: &str) -> bool {
    ["CACERT", "_CERT", "_KEY", "_FILE"]
        .iter()
        .any(|s| var.ends_with(s))
}

fn field<'a>(value: &'a serde_norway::Value, dotted: &str) -> &'a serde_norway::Value {
    dotted.split('.').fold(value, |v, key| &v[key])
}

#[test]
fn every_listed_env_var_sets_its_field() {
    // token_file keeps validation happy when REDIS_VAULT_ENABLED turns Vault on.
    let base_yaml = "vault:\n  auth:\n    token_file: /run/token\n";
    let base = Config::from_yaml_and_env(base_yaml, &HashMap::new()).expect("base");
    let base = serde_norway::to_value(&base).expect("to value");
    // File-valued variables get a real (empty) file: validation may read it.
    let files = tempfile::tempdir().expect("tempdir");
    let mut sample_files = Vec::new();
    for var in config::ENV_VARS
        .iter()
        .map(|v| v.name)
        .filter(|v| file_valued(v))
    {
        let path = files.path().join(var);
        std::fs::write(&path, "").expect("write sample file");
        sample_files.push((var.to_string(), path.to_str().expect("utf-8").to_string()));
    }
    for &config::EnvVar {
        name: var,
        field: dotted,
        ..
    } in config::ENV_VARS
    {
        let value = match sample(var) {
            Some(v) => v.to_string(),
            None if file_valued(var) => files.path().join(var).to_str().expect("utf-8").into(),
            None => panic!("add a sample value for {var}"),
        };
        let mut env = HashMap::from([(var.to_string(), value.clone())]);
        env.extend(
            companions(var)
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        if file_valued(var) {
            // Files may come in pairs (certificate and key): give them all.
            env.extend(sample_files.iter().cloned());
        }
        let config = Config::from_yaml_and_env(base_yaml, &env)
            .unwrap_or_else(|e| panic!("{var}={value}: {e}"));
        let after = serde_norway::to_value(&config).expect("to value");
        assert!(
            !field(&after, dotted).is_null(),
            "{var}: no field {dotted} in the schema"
        );
        assert_ne!(
            field(&after, dotted),
            field(&base, dotted),
            "{var} does not set {dotted}"
        );
    }
}

/// The dotted path of each field line of config.yaml (block style, two
/// spaces a level), with the line itself.
fn config_yaml_lines() -> Vec<(String, &'static str)> {
    let mut path: Vec<(usize, &str)> = Vec::new();
    let mut out = Vec::new();
    for line in include_str!("../config.yaml").lines() {
        let indent = line.len() - line.trim_start().len();
        let Some((key, _)) = line.trim_start().split_once(':') else {
            continue;
        };
        if key.starts_with('#') || key.contains(' ') {
            continue;
        }
        path.retain(|(i, _)| *i < indent);
        path.push((indent, key));
        let dotted: Vec<&str> = path.iter().map(|(_, k)| *k).collect();
        out.push((dotted.join("."), line));
    }
    out
}

#[test]
fn every_env_var_is_documented_with_its_field() {
    let lines = config_yaml_lines();
    let readme = include_str!("../README.md");
    for var in config::ENV_VARS {
        let line = lines
            .iter()
            .find(|(path, _)| path == var.field)
            .map(|(_, line)| *line)
            .unwrap_or_else(|| panic!("{var:?}: config.yaml has no field {}", var.field));
        let comment = line.split_once('#').map_or("", |(_, c)| c);
        assert!(
            comment.contains(var.name),
            "{var:?}: config.yaml's line for {} does not name {}: {line:?}",
            var.field,
            var.name
        );
        assert!(
            readme.contains(&format!("`{}`", var.name)),
            "{var:?}: README's config table does not name {}",
            var.name
        );
    }
}

#[test]
fn health_with_a_huge_timeout_is_a_usage_error_not_a_panic() {
    for timeout in ["18000000000000000000s", "999999999999s", "2h"] {
        let out = plugin()
            .args(["health", "--addr", "127.0.0.1:1", "--timeout", timeout])
            .output()
            .expect("run health");
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(EX_USAGE), "{timeout}: {err}");
        assert!(err.contains("--timeout"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// The memory backend: the plugin needs nothing else to serve.
const MEMORY_BACKEND: &str = "backend:\n  kind: memory\n";

#[test]
fn bad_worker_threads_is_one_line_and_exit_64() {
    // A free loopback port: a value wrongly accepted would serve there.
    let yaml = common::plugin::loopback_yaml(common::free_port(), "", "warn") + MEMORY_BACKEND;
    let file = config_file(&yaml);
    for value in ["0", "many", "-2", ""] {
        let run = plugin()
            .args(["--config", file.path().to_str().expect("utf-8")])
            .env("TOKIO_WORKER_THREADS", value)
            .run_bounded(std::time::Duration::from_secs(10));
        let err = run.stderr();
        assert!(run.exited, "{value:?}: served instead of refusing");
        assert_eq!(run.output.status.code(), Some(EX_USAGE), "{value:?}: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains("TOKIO_WORKER_THREADS"), "{err}");
    }
}

/// Threads of process `pid` named as tokio names its workers.
fn runtime_workers(pid: u32) -> usize {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc tasks");
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "tokio-rt-worker")
        .count()
}

#[test]
fn worker_threads_follow_tokio_worker_threads() {
    for n in ["1", "3"] {
        let plugin =
            common::PluginProcess::spawn("", MEMORY_BACKEND, &[("TOKIO_WORKER_THREADS", n)], None);
        let workers = runtime_workers(plugin.pid());
        assert_eq!(workers.to_string(), n, "TOKIO_WORKER_THREADS={n}");
    }
}
