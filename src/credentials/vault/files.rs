//! Secrets kept in files (a token, a role or secret id, a JWT, a client
//! key): read them safely — small regular files only, never blocking on a
//! FIFO — and name the config key when one cannot be read.
//!
//! It does not know which login needs which file ([`super::login`] does).

use std::path::Path;

use super::error::VaultError;
use crate::secret::Secret;

/// The most a token, secret id, role id or JWT file may hold. Real ones are
/// under 2 KiB; a bound keeps a wrong path (a log, a device) from filling
/// memory.
const MAX_SECRET_FILE: u64 = 64 * 1024;

/// Reads a secret from `file` if given (trimmed), else uses `inline`.
pub(super) async fn secret_from(
    inline: &Secret,
    file: Option<&Path>,
    field: &'static str,
) -> Result<Secret, VaultError> {
    let Some(path) = file else {
        return Ok(inline.clone());
    };
    let owned = path.to_path_buf();
    let text = tokio::task::spawn_blocking(move || read_small_file(&owned))
        .await
        .unwrap_or_else(|_| Err("reader task failed".into()))
        .map_err(|reason| file_error(field, path, reason))?;
    Ok(Secret::new(String::from_utf8_lossy(&text).trim()))
}

pub(super) fn file_error(field: &'static str, path: &Path, reason: String) -> VaultError {
    VaultError::File {
        field,
        path: path.display().to_string(),
        reason,
    }
}

/// Reads a regular file of at most [`MAX_SECRET_FILE`] bytes. Opened
/// non-blocking, so a FIFO put where a token belongs fails at once instead
/// of waiting for a writer; its type is checked on the opened handle.
pub(super) fn read_small_file(path: &Path) -> Result<Vec<u8>, String> {
    use std::{io::Read, os::unix::fs::OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| e.kind().to_string())?;
    let meta = file.metadata().map_err(|e| e.kind().to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let mut data = Vec::new();
    file.take(MAX_SECRET_FILE + 1)
        .read_to_end(&mut data)
        .map_err(|e| e.kind().to_string())?;
    if data.len() as u64 > MAX_SECRET_FILE {
        return Err(format!("larger than {} KiB", MAX_SECRET_FILE / 1024));
    }
    Ok(data)
}
