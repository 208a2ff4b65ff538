//! How the plugin proves who it is to Vault: the login methods (token,
//! AppRole, Kubernetes, cert) built from config, what each can do (log in
//! again by itself, own its token) and the files each reads.
//!
//! It does not call Vault: [`super::session`] performs the login and keeps
//! the token alive.

use std::path::{Path, PathBuf};

use super::{
    error::VaultError,
    files::{file_error, read_small_file},
};
use crate::{
    config::{VaultAuthMethod, VaultConfig},
    secret::Secret,
};

/// Where Kubernetes mounts a pod's service-account token.
pub const DEFAULT_JWT_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// How the plugin proves who it is to Vault.
pub(super) enum Login {
    /// A token given inline/env, or read from a file (re-read on change).
    Token {
        inline: Secret,
        file: Option<PathBuf>,
    },
    AppRole {
        mount: String,
        role_id: Secret,
        role_id_file: Option<PathBuf>,
        secret_id: Secret,
        secret_id_file: Option<PathBuf>,
    },
    Kubernetes {
        mount: String,
        role: String,
        jwt_file: PathBuf,
    },
    /// TLS certificate auth with the client certificate the client presents.
    Cert { mount: String, role: String },
}

fn opt_path(s: &str) -> Option<PathBuf> {
    (!s.is_empty()).then(|| PathBuf::from(s))
}

impl Login {
    pub(super) fn from_config(v: &VaultConfig) -> Self {
        let a = &v.auth;
        let mount = |default: &str| {
            if a.mount.is_empty() {
                default.to_string()
            } else {
                a.mount.clone()
            }
        };
        match a.method {
            VaultAuthMethod::Token => Login::Token {
                inline: a.token.clone(),
                file: opt_path(&a.token_file),
            },
            VaultAuthMethod::Approle => Login::AppRole {
                mount: mount("approle"),
                role_id: Secret::new(a.role_id.clone()),
                role_id_file: opt_path(&a.role_id_file),
                secret_id: a.secret_id.clone(),
                secret_id_file: opt_path(&a.secret_id_file),
            },
            VaultAuthMethod::Kubernetes => Login::Kubernetes {
                mount: mount("kubernetes"),
                role: a.role.clone(),
                jwt_file: opt_path(&a.jwt_file).unwrap_or_else(|| DEFAULT_JWT_FILE.into()),
            },
            VaultAuthMethod::Cert => Login::Cert {
                mount: mount("cert"),
                role: a.role.clone(),
            },
        }
    }

    pub(super) fn name(&self) -> &'static str {
        match self {
            Login::Token { .. } => "token",
            Login::AppRole { .. } => "approle",
            Login::Kubernetes { .. } => "kubernetes",
            Login::Cert { .. } => "cert",
        }
    }

    /// True when a new token can be obtained without an operator.
    pub(super) fn can_relogin(&self) -> bool {
        !matches!(self, Login::Token { file: None, .. })
    }

    /// True when the token in use came from our own login (AppRole,
    /// Kubernetes, cert), not from the operator (inline or file).
    pub(super) fn owns_token(&self) -> bool {
        !matches!(self, Login::Token { .. })
    }

    /// The files this login reads, with their config keys.
    fn files(&self) -> Vec<(&'static str, &Path)> {
        let mut files = Vec::new();
        match self {
            Login::Token { file, .. } => files.extend(file.as_deref().map(|f| (TOKEN_FILE, f))),
            Login::AppRole {
                role_id_file,
                secret_id_file,
                ..
            } => {
                files.extend(role_id_file.as_deref().map(|f| (ROLE_ID_FILE, f)));
                files.extend(secret_id_file.as_deref().map(|f| (SECRET_ID_FILE, f)));
            }
            Login::Kubernetes { jwt_file, .. } => files.push((JWT_FILE, jwt_file)),
            Login::Cert { .. } => {}
        }
        files
    }
}

pub(super) const TOKEN_FILE: &str = "vault.auth.token_file";
pub(super) const ROLE_ID_FILE: &str = "vault.auth.role_id_file";
pub(super) const SECRET_ID_FILE: &str = "vault.auth.secret_id_file";
pub(super) const JWT_FILE: &str = "vault.auth.jwt_file";

/// At start-up: every credential file that exists must be a small regular
/// file. A missing one is left to the login, which retries (a Kubernetes
/// token may be mounted late).
pub(super) fn check_files(login: &Login) -> Result<(), VaultError> {
    for (field, path) in login.files() {
        match read_small_file(path) {
            Ok(_) => {}
            Err(_) if !path.exists() => {}
            Err(reason) => return Err(file_error(field, path, reason)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_files_must_be_small_regular_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ok = dir.path().join("token");
        std::fs::write(&ok, "s.abc\n").expect("write");
        assert_eq!(read_small_file(&ok).expect("read"), b"s.abc\n");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 64 * 1024 + 1]).expect("write");
        assert_eq!(read_small_file(&big).unwrap_err(), "larger than 64 KiB");
        // A FIFO without a writer: refused at once, not waited on.
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.expect("mkfifo").success());
        assert_eq!(read_small_file(&fifo).unwrap_err(), "not a regular file");
        assert_eq!(
            read_small_file(dir.path()).unwrap_err(),
            "not a regular file"
        );
        let login = Login::Token {
            inline: Secret::default(),
            file: Some(fifo),
        };
        let e = check_files(&login).unwrap_err().to_string();
        assert!(e.starts_with("vault.auth.token_file: "), "{e}");
        let missing = Login::Token {
            inline: Secret::default(),
            file: Some(dir.path().join("not-yet")),
        };
        assert!(
            check_files(&missing).is_ok(),
            "a missing file is the login's to retry"
        );
    }

    #[test]
    fn relogin_needs_a_way_to_log_in() {
        let mut c = VaultConfig::default();
        assert!(!Login::from_config(&c).can_relogin());
        c.auth.token_file = "/run/token".into();
        assert!(Login::from_config(&c).can_relogin());
        c.auth.method = VaultAuthMethod::Kubernetes;
        assert!(Login::from_config(&c).can_relogin());
        let Login::Kubernetes {
            mount, jwt_file, ..
        } = Login::from_config(&c)
        else {
            panic!("kubernetes login");
        };
        assert_eq!(mount, "kubernetes");
        assert_eq!(jwt_file, PathBuf::from(DEFAULT_JWT_FILE));
    }
}
