//! The Redis address as config writes it: `host:port`, `redis://` or
//! `rediss://`, possibly with `user:password@` that config loading moves
//! into `backend.username`/`password`. Owns parsing and redaction; it does
//! not dial (the backend does).

use crate::secret::Secret;

/// An address with the username and password it carried taken out.
#[derive(Debug)]
pub struct AddressCredentials {
    /// The address without `user:password@`.
    pub address: String,
    pub username: String,
    pub password: Secret,
}

/// `scheme://` (possibly empty), `user:password` if any, and `host:port`
/// with what follows. The last `@` ends the credentials wherever it is: a
/// password with `/` or `@` in it must never be mistaken for the host (and
/// then printed in an error).
fn split_userinfo(address: &str) -> (&str, Option<&str>, &str) {
    let scheme_end = address.find("://").map_or(0, |i| i + 3);
    let (scheme, rest) = address.split_at(scheme_end);
    match rest.rsplit_once('@') {
        Some((userinfo, hostport)) => (scheme, Some(userinfo), hostport),
        None => (scheme, None, rest),
    }
}

/// Takes `user:password@` out of an address (percent-decoded, as in a URL;
/// the last `@` ends them, so an `@` in the password works too). `None`
/// when the address carries no credentials. Errors never echo them.
pub fn split_credentials(address: &str) -> Result<Option<AddressCredentials>, String> {
    let (scheme, Some(userinfo), hostport) = split_userinfo(address) else {
        return Ok(None);
    };
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let decode = |s: &str, what: &str| {
        percent_decode(s).ok_or_else(|| format!("the {what} in it is not valid percent-encoding"))
    };
    Ok(Some(AddressCredentials {
        address: format!("{scheme}{hostport}"),
        username: decode(user, "username")?,
        password: Secret::new(decode(password, "password")?),
    }))
}

/// The address with any `user:password@` replaced, for messages.
pub fn redact_address(address: &str) -> String {
    match split_userinfo(address) {
        (scheme, Some(_), hostport) => format!("{scheme}[redacted]@{hostport}"),
        _ => address.to_string(),
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            let hex = std::str::from_utf8(&hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// A host, port and whether TLS is implied, from `host:port`,
/// `redis://host:port` or `rediss://host:port`. Credentials in the address
/// are refused here: config loading moves them to username/password
/// ([`split_credentials`]), so an address that still has them would be
/// dialed without AUTH. Errors show the address with credentials redacted.
pub fn parse_address(address: &str) -> Result<(String, u16, bool), String> {
    let shown = redact_address(address);
    let (rest, tls) = if let Some(r) = address.strip_prefix("rediss://") {
        (r, true)
    } else if let Some(r) = address.strip_prefix("redis://") {
        (r, false)
    } else if address.contains("://") {
        return Err(format!("{shown:?}: scheme must be redis:// or rediss://"));
    } else {
        (address, false)
    };
    if rest.contains('@') {
        return Err(format!(
            "{shown:?}: credentials in the address: give them as backend.username/password"
        ));
    }
    let rest = rest.split('/').next().unwrap_or(rest);
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("{shown:?}: expected host:port"))?;
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{shown:?}: port must be 1..65535"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{shown:?}: host is empty"));
    }
    Ok((host.to_string(), port, tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_errors_never_show_credentials() {
        for address in [
            "redis://u:zq/9x@h:1",
            "redis://u:zq9x@h",
            "http://u:zq9x@h:1",
            "u:zq9x@:1",
            "redis://u:zq9x@h:0/1",
        ] {
            let err = parse_address(address).unwrap_err();
            assert!(!err.contains("zq"), "{address}: {err}");
            assert!(err.contains("[redacted]"), "{err}");
        }
        assert_eq!(redact_address("redis://h:1"), "redis://h:1");
        let split = split_credentials("redis://u:zq/9x@h:1/2")
            .expect("valid")
            .expect("has credentials");
        assert_eq!(split.address, "redis://h:1/2");
        assert_eq!(
            (split.username.as_str(), split.password.expose()),
            ("u", "zq/9x")
        );
        assert!(split_credentials("h:1").expect("valid").is_none());
    }

    #[test]
    fn addresses_parse_with_and_without_scheme() {
        assert_eq!(
            parse_address("localhost:6379"),
            Ok(("localhost".into(), 6379, false))
        );
        assert_eq!(
            parse_address("redis://127.0.0.1:7000/0"),
            Ok(("127.0.0.1".into(), 7000, false))
        );
        assert_eq!(
            parse_address("rediss://cache:6380"),
            Ok(("cache".into(), 6380, true))
        );
        assert_eq!(parse_address("[::1]:6379"), Ok(("::1".into(), 6379, false)));
        assert!(parse_address("localhost").is_err());
        assert!(parse_address("http://x:1").is_err());
        assert!(parse_address("x:0").is_err());
        assert!(parse_address(":6379").is_err());
    }
}
