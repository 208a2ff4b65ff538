//! RESP2, the Redis wire protocol: commands out, replies in.
//!
//! Commands are written straight into the connection's output buffer (no
//! intermediate `Vec` per argument). Replies are found whole in the read
//! buffer first ([`frame_len`]), then split off and parsed ([`parse`]) so
//! that bulk strings are slices of the frame, not copies.
//!
//! This module knows bytes only: what a reply *means* (hit, miss, count) is
//! the backend's business, and sockets are the connection's.

use bytes::{BufMut, Bytes, BytesMut};

/// Replies nest arrays at most this deep; deeper is a protocol error (the
/// commands we send answer with one level at most).
const MAX_DEPTH: usize = 4;

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Reply {
    /// `$-1` or `*-1`: no value.
    Nil,
    /// `+OK` and friends.
    Status(Bytes),
    /// `-ERR ...`: the server refused the command.
    Error(Bytes),
    /// `:n`.
    Int(i64),
    /// `$n`: a value.
    Bulk(Bytes),
    /// `*n`.
    Array(Vec<Reply>),
}

impl Reply {
    /// The error code of an error reply: its first word (`NOPERM`, `WRONGPASS`).
    pub(super) fn error_code(msg: &[u8]) -> &str {
        let end = msg.iter().position(|&b| b == b' ').unwrap_or(msg.len());
        std::str::from_utf8(&msg[..end]).unwrap_or("")
    }
}

/// The read buffer holds bytes that are not RESP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed reply from the server: {0}")]
pub(super) struct ProtocolError(pub(super) &'static str);

/// Appends one command (`*n` of bulk strings) to `out`.
pub(super) fn encode(out: &mut BytesMut, args: &[&[u8]]) {
    header(out, b'*', args.len());
    for arg in args {
        header(out, b'$', arg.len());
        out.put_slice(arg);
        out.put_slice(b"\r\n");
    }
}

/// Appends `*n\r\n`: the start of a command whose `n` arguments follow via
/// [`arg`].
pub(super) fn command_header(out: &mut BytesMut, n: usize) {
    header(out, b'*', n);
}

/// Appends one bulk-string argument.
pub(super) fn arg(out: &mut BytesMut, arg: &[u8]) {
    header(out, b'$', arg.len());
    out.put_slice(arg);
    out.put_slice(b"\r\n");
}

fn header(out: &mut BytesMut, kind: u8, n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = n;
    loop {
        i -= 1;
        // A digit is < 10, so the cast cannot truncate.
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.reserve(3 + digits.len() - i);
    out.put_u8(kind);
    out.put_slice(&digits[i..]);
    out.put_slice(b"\r\n");
}

/// The length of the first complete reply in `buf`, `None` when more bytes
/// are needed.
pub(super) fn frame_len(buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
    scan(buf, 0, 0)
}

fn scan(buf: &[u8], at: usize, depth: usize) -> Result<Option<usize>, ProtocolError> {
    let Some((kind, line, next)) = line(buf, at)? else {
        return Ok(None);
    };
    match kind {
        b'+' | b'-' | b':' => Ok(Some(next)),
        b'$' => match number(line)? {
            -1 => Ok(Some(next)),
            n if n < 0 => Err(ProtocolError("negative bulk length")),
            n => {
                let end = next + usize::try_from(n).map_err(|_| ProtocolError("bulk length"))?;
                if buf.len() < end + 2 {
                    return Ok(None);
                }
                if &buf[end..end + 2] != b"\r\n" {
                    return Err(ProtocolError("bulk string not terminated"));
                }
                Ok(Some(end + 2))
            }
        },
        b'*' => {
            let n = number(line)?;
            if n == -1 {
                return Ok(Some(next));
            }
            if n < 0 || depth >= MAX_DEPTH {
                return Err(ProtocolError("bad array"));
            }
            let mut at = next;
            for _ in 0..n {
                match scan(buf, at, depth + 1)? {
                    Some(end) => at = end,
                    None => return Ok(None),
                }
            }
            Ok(Some(at))
        }
        _ => Err(ProtocolError("unknown reply type")),
    }
}

/// One header line: its type byte, the text after it, and where the next
/// line starts.
type Line<'a> = (u8, &'a [u8], usize);

/// The header line at `at`, `None` when it is not complete yet.
fn line(buf: &[u8], at: usize) -> Result<Option<Line<'_>>, ProtocolError> {
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let rest = &buf[at + 1..];
    match rest.iter().position(|&b| b == b'\n') {
        Some(nl) if nl > 0 && rest[nl - 1] == b'\r' => {
            Ok(Some((kind, &rest[..nl - 1], at + nl + 2)))
        }
        Some(_) => Err(ProtocolError("line not terminated by CRLF")),
        None => Ok(None),
    }
}

fn number(line: &[u8]) -> Result<i64, ProtocolError> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(ProtocolError("bad number"))
}

/// Parses one whole reply, as measured by [`frame_len`].
pub(super) fn parse(frame: &Bytes) -> Result<Reply, ProtocolError> {
    let (reply, _) = parse_at(frame, 0)?;
    Ok(reply)
}

fn parse_at(frame: &Bytes, at: usize) -> Result<(Reply, usize), ProtocolError> {
    let (kind, line, next) = line(frame, at)?.ok_or(ProtocolError("truncated"))?;
    let start = at + 1;
    let text = || frame.slice(start..start + line.len());
    match kind {
        b'+' => Ok((Reply::Status(text()), next)),
        b'-' => Ok((Reply::Error(text()), next)),
        b':' => Ok((Reply::Int(number(line)?), next)),
        b'$' => match number(line)? {
            -1 => Ok((Reply::Nil, next)),
            n => {
                let end = next + usize::try_from(n).map_err(|_| ProtocolError("bulk length"))?;
                if frame.len() < end + 2 {
                    return Err(ProtocolError("truncated"));
                }
                Ok((Reply::Bulk(frame.slice(next..end)), end + 2))
            }
        },
        b'*' => match number(line)? {
            -1 => Ok((Reply::Nil, next)),
            n => {
                let n = usize::try_from(n).map_err(|_| ProtocolError("bad array"))?;
                // Bounded by the frame: each element takes at least 3 bytes.
                let mut items = Vec::with_capacity(n.min(frame.len() / 3));
                let mut at = next;
                for _ in 0..n {
                    let (item, end) = parse_at(frame, at)?;
                    items.push(item);
                    at = end;
                }
                Ok((Reply::Array(items), at))
            }
        },
        _ => Err(ProtocolError("unknown reply type")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(wire: &[u8]) -> Reply {
        let len = frame_len(wire).unwrap().unwrap();
        assert_eq!(len, wire.len(), "the whole input is one frame");
        parse(&Bytes::copy_from_slice(wire)).unwrap()
    }

    #[test]
    fn commands_encode_as_arrays_of_bulk_strings() {
        let mut out = BytesMut::new();
        encode(&mut out, &[b"SET", b"k", b"", b"0123456789"]);
        assert_eq!(
            &out[..],
            b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n$10\r\n0123456789\r\n"
        );
        let mut split = BytesMut::new();
        command_header(&mut split, 2);
        arg(&mut split, b"GET");
        arg(&mut split, b"k");
        assert_eq!(&split[..], b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    }

    #[test]
    fn every_reply_type_parses() {
        assert_eq!(one(b"+OK\r\n"), Reply::Status(Bytes::from_static(b"OK")));
        assert_eq!(
            one(b"-NOPERM no\r\n"),
            Reply::Error(Bytes::from_static(b"NOPERM no"))
        );
        assert_eq!(one(b":-42\r\n"), Reply::Int(-42));
        assert_eq!(one(b"$-1\r\n"), Reply::Nil);
        assert_eq!(one(b"*-1\r\n"), Reply::Nil);
        assert_eq!(one(b"$0\r\n\r\n"), Reply::Bulk(Bytes::new()));
        // Values may hold CR, LF and anything else: the length rules.
        assert_eq!(
            one(b"$4\r\na\r\nb\r\n"),
            Reply::Bulk(Bytes::from_static(b"a\r\nb"))
        );
        assert_eq!(
            one(b"*3\r\n$1\r\na\r\n$-1\r\n:7\r\n"),
            Reply::Array(vec![
                Reply::Bulk(Bytes::from_static(b"a")),
                Reply::Nil,
                Reply::Int(7)
            ])
        );
        assert_eq!(one(b"*0\r\n"), Reply::Array(vec![]));
    }

    #[test]
    fn partial_frames_ask_for_more_at_every_cut() {
        let wire = b"*3\r\n$5\r\nhello\r\n$-1\r\n+OK\r\n";
        for cut in 0..wire.len() {
            assert_eq!(frame_len(&wire[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(frame_len(wire), Ok(Some(wire.len())));
    }

    #[test]
    fn back_to_back_frames_are_measured_one_at_a_time() {
        let wire = b":1\r\n$2\r\nab\r\n";
        assert_eq!(frame_len(wire), Ok(Some(4)));
        assert_eq!(frame_len(&wire[4..]), Ok(Some(8)));
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        assert!(frame_len(b"?x\r\n").is_err());
        assert!(frame_len(b"$x\r\n").is_err());
        assert!(frame_len(b"$-5\r\n").is_err());
        assert!(frame_len(b"$2\r\nabXY").is_err());
        assert!(frame_len(b":1\n").is_err());
        assert!(frame_len(b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n").is_err());
    }

    #[test]
    fn error_codes_are_the_first_word() {
        assert_eq!(
            Reply::error_code(b"NOPERM User x has no permissions"),
            "NOPERM"
        );
        assert_eq!(Reply::error_code(b"WRONGPASS"), "WRONGPASS");
        assert_eq!(Reply::error_code(b""), "");
    }
}
