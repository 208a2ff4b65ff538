//! RESP2, the Redis wire protocol: commands out, replies in.
//!
//! Commands are written straight into the connection's output buffer (no
//! intermediate `Vec` per argument). Replies are found whole in the read
//! buffer first ([`Scanner`]: resumable, with a cap on header lines and on
//! a reply's bytes), then split off and parsed ([`parse`]) so that bulk
//! strings are slices of the frame, not copies.
//!
//! This module knows bytes only: what a reply *means* (hit, miss, count) is
//! `commands`' business, and sockets are the connection's.

use bytes::{Buf, BufMut, Bytes, BytesMut};

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

/// Longest header line accepted: a status, error, number or length line.
/// Redis' own are short (error messages are the longest, well under 1 KiB);
/// a longer one is a broken or hostile server, not a reply to wait for.
pub(super) const MAX_LINE: usize = 64 * 1024;

/// What [`Scanner::next`] found at the front of the read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scan {
    /// More bytes are needed.
    Incomplete,
    /// The first `n` bytes of the buffer are one whole reply.
    Frame(usize),
    /// The reply being read is larger than the cap: fail its command now.
    /// Its remaining bytes are discarded as they arrive.
    TooLarge,
    /// The last byte of a too-large reply has been discarded.
    Skipped,
}

/// Finds whole replies in a read buffer that grows between calls, without
/// scanning any byte twice: it remembers where the scan of an incomplete
/// reply got to (the open arrays, a bulk string waiting for its body, how
/// far the search for a line's end went). It also enforces the two bounds
/// that keep a broken or hostile server from taking unbounded memory: a
/// header line longer than [`MAX_LINE`] is a protocol error, and a reply
/// whose size (every byte of it, framing included) would pass `max_reply`
/// is reported as [`Scan::TooLarge`] as soon as a header says so, then
/// dropped from the buffer as it arrives, so the stream stays in step.
///
/// Positions are offsets into the buffer, whose front is always the start
/// of the reply being scanned (the caller splits a [`Scan::Frame`] off).
#[derive(Debug)]
pub(super) struct Scanner {
    max_reply: usize,
    /// Where the next header line starts.
    at: usize,
    /// Bytes after the line's type byte already searched for its end.
    searched: usize,
    /// Elements still to come in each open array, innermost last.
    open: [u64; MAX_DEPTH],
    depth: usize,
    /// End (past its CRLF) of a bulk string whose body has not all arrived.
    bulk_end: Option<usize>,
    /// The reply is too large: its bytes are being discarded.
    skipping: bool,
    /// A too-large reply ended at the step that found it too large.
    skipped_whole: bool,
    /// Bytes examined by line searches, ever; tests check it stays linear.
    examined: u64,
}

impl Scanner {
    /// A scanner that reports replies larger than `max_reply` bytes.
    pub(super) fn new(max_reply: usize) -> Self {
        Self {
            max_reply,
            at: 0,
            searched: 0,
            open: [0; MAX_DEPTH],
            depth: 0,
            bulk_end: None,
            skipping: false,
            skipped_whole: false,
            examined: 0,
        }
    }

    /// The cap on one reply's bytes.
    pub(super) fn max_reply(&self) -> usize {
        self.max_reply
    }

    /// Scans on from where the last call stopped. In a too-large reply,
    /// drops the bytes of it that `buf` holds.
    pub(super) fn next(&mut self, buf: &mut BytesMut) -> Result<Scan, ProtocolError> {
        loop {
            if self.skipping {
                self.discard(buf);
                if self.skipped_whole {
                    return Ok(self.finish(buf));
                }
            }
            let Some(complete) = self.step(buf)? else {
                return Ok(Scan::Incomplete);
            };
            let end = self.bulk_end.unwrap_or(self.at);
            if !self.skipping && end > self.max_reply {
                self.skipping = true;
                self.skipped_whole = complete;
                return Ok(Scan::TooLarge);
            }
            if complete {
                return Ok(self.finish(buf));
            }
        }
    }

    /// Reads one header line or one bulk body: `None` when more bytes are
    /// needed, else whether the whole reply is now complete.
    fn step(&mut self, buf: &[u8]) -> Result<Option<bool>, ProtocolError> {
        if let Some(end) = self.bulk_end {
            if buf.len() < end {
                return Ok(None);
            }
            if &buf[end - 2..end] != b"\r\n" {
                return Err(ProtocolError("bulk string not terminated"));
            }
            self.bulk_end = None;
            self.at = end;
            return Ok(Some(self.close()));
        }
        let Some((kind, len)) = self.line(buf)? else {
            return Ok(None);
        };
        let text = &buf[self.at + 1..self.at + 1 + len];
        let next = self.at + 1 + len + 2;
        let done = match kind {
            b'+' | b'-' | b':' => true,
            b'$' => match number(text)? {
                -1 => true,
                n if n < 0 => return Err(ProtocolError("negative bulk length")),
                n => {
                    let end = usize::try_from(n)
                        .ok()
                        .and_then(|n| next.checked_add(n)?.checked_add(2))
                        .ok_or(ProtocolError("bulk length"))?;
                    self.bulk_end = Some(end);
                    false
                }
            },
            b'*' => match number(text)? {
                -1 | 0 => true,
                n if n < 0 || self.depth >= MAX_DEPTH => return Err(ProtocolError("bad array")),
                n => {
                    self.open[self.depth] = n.unsigned_abs();
                    self.depth += 1;
                    false
                }
            },
            _ => return Err(ProtocolError("unknown reply type")),
        };
        self.at = next;
        self.searched = 0;
        Ok(Some(done && self.close()))
    }

    /// Counts one element done; true when that completes the whole reply.
    fn close(&mut self) -> bool {
        while self.depth > 0 {
            let left = &mut self.open[self.depth - 1];
            *left -= 1;
            if *left > 0 {
                return false;
            }
            self.depth -= 1;
        }
        true
    }

    /// The header line at `at`: its type byte and text length, `None` when
    /// its end has not arrived. Searches only bytes not searched before.
    fn line(&mut self, buf: &[u8]) -> Result<Option<(u8, usize)>, ProtocolError> {
        let Some(&kind) = buf.get(self.at) else {
            return Ok(None);
        };
        let text = self.at + 1;
        let from = text + self.searched;
        let limit = text + MAX_LINE + 2;
        let to = buf.len().min(limit);
        if from < to {
            if let Some(p) = buf[from..to].iter().position(|&b| b == b'\n') {
                self.examined += p as u64 + 1;
                let nl = from + p;
                if nl == text || buf[nl - 1] != b'\r' {
                    return Err(ProtocolError("line not terminated by CRLF"));
                }
                return Ok(Some((kind, nl - 1 - text)));
            }
            self.examined += (to - from) as u64;
            self.searched = to - text;
        }
        if to == limit {
            return Err(ProtocolError("header line longer than 64 KiB"));
        }
        Ok(None)
    }

    /// Drops the scanned bytes of a too-large reply (and the part of a bulk
    /// body that has arrived, but its CRLF, which is checked).
    fn discard(&mut self, buf: &mut BytesMut) {
        let upto = self.bulk_end.map_or(self.at, |end| end - 2).min(buf.len());
        buf.advance(upto);
        self.at -= upto.min(self.at);
        if let Some(end) = &mut self.bulk_end {
            *end -= upto;
        }
    }

    /// Ends the reply scanned: the frame to split off, or the end of a
    /// skipped one. Resets for the next reply.
    fn finish(&mut self, buf: &mut BytesMut) -> Scan {
        let scan = if self.skipping {
            buf.advance(self.at);
            Scan::Skipped
        } else {
            Scan::Frame(self.at)
        };
        *self = Self {
            examined: self.examined,
            ..Self::new(self.max_reply)
        };
        scan
    }
}

/// The length of the first complete reply in `buf`, `None` when more bytes
/// are needed (a fresh scan, no cap; for tests).
#[cfg(test)]
pub(super) fn frame_len(buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
    match Scanner::new(usize::MAX).next(&mut BytesMut::from(buf))? {
        Scan::Frame(n) => Ok(Some(n)),
        _ => Ok(None),
    }
}

/// One header line: its type byte, the text after it, and where the next
/// line starts.
type Line<'a> = (u8, &'a [u8], usize);

/// The header line at `at` of a whole frame (already checked by a
/// [`Scanner`]), `None` when it is not complete.
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

/// Parses one whole reply, as measured by a [`Scanner`].
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

    /// Feeds `wire` to one scanner `chunk` bytes at a time, collecting what
    /// it reports; returns them and the most bytes the buffer held.
    fn feed(scanner: &mut Scanner, wire: &[u8], chunk: usize) -> (Vec<Scan>, usize) {
        let mut buf = BytesMut::new();
        let mut seen = Vec::new();
        let mut peak = 0;
        for piece in wire.chunks(chunk) {
            buf.extend_from_slice(piece);
            peak = peak.max(buf.len());
            loop {
                match scanner.next(&mut buf).expect("valid RESP") {
                    Scan::Incomplete => break,
                    Scan::Frame(n) => {
                        buf.advance(n);
                        seen.push(Scan::Frame(n));
                    }
                    other => seen.push(other),
                }
            }
        }
        assert!(buf.is_empty(), "{} bytes left over", buf.len());
        (seen, peak)
    }

    #[test]
    fn one_byte_at_a_time_scans_each_byte_about_once() {
        let mut wire = b"*1000\r\n".to_vec();
        for i in 0..1000 {
            wire.extend_from_slice(format!("$5\r\nv{i:04}\r\n").as_bytes());
        }
        let error = format!("-ERR {}\r\n", "x".repeat(20_000));
        wire.extend_from_slice(error.as_bytes());
        // Header bytes after each type byte: "1000\r\n", 1000 x "5\r\n",
        // and the error line.
        let header_bytes = 6 + 1000 * 3 + (error.len() - 1);
        let mut scanner = Scanner::new(usize::MAX);
        let (seen, _) = feed(&mut scanner, &wire, 1);
        assert_eq!(
            seen,
            vec![
                Scan::Frame(wire.len() - error.len()),
                Scan::Frame(error.len())
            ]
        );
        // Each header byte is searched once and values not at all; a rescan
        // on every byte read would be quadratic in the line's length.
        assert_eq!(scanner.examined, header_bytes as u64);
    }

    #[test]
    fn a_header_line_without_end_fails_after_64_kib() {
        let mut scanner = Scanner::new(usize::MAX);
        let mut buf = BytesMut::from(&b"+"[..]);
        let chunk = [b'A'; 4096];
        let mut fed = 1;
        let err = loop {
            // Bounded: 200 MB at most, as a hostile server might send.
            assert!(fed < 200_000_000, "no error after {fed} bytes");
            buf.extend_from_slice(&chunk);
            fed += chunk.len();
            match scanner.next(&mut buf) {
                Ok(Scan::Incomplete) => {}
                Ok(other) => panic!("{other:?}"),
                Err(e) => break e,
            }
        };
        assert_eq!(err, ProtocolError("header line longer than 64 KiB"));
        assert!(
            fed <= MAX_LINE + 2 + chunk.len(),
            "failed after {fed} bytes"
        );
        assert!(
            scanner.examined <= fed as u64,
            "examined {}",
            scanner.examined
        );
        // A long line that does end is fine.
        let long = format!("-ERR {}\r\n", "x".repeat(MAX_LINE - 5));
        assert_eq!(frame_len(long.as_bytes()), Ok(Some(long.len())));
    }

    #[test]
    fn a_bulk_over_the_cap_fails_at_its_header_and_is_skipped_unbuffered() {
        let mut scanner = Scanner::new(1000);
        let mut wire = b"$100000\r\n".to_vec();
        wire.extend(std::iter::repeat_n(b'v', 100_000));
        wire.extend_from_slice(b"\r\n+OK\r\n");
        let mut header = BytesMut::from(&wire[..10]);
        assert_eq!(
            scanner.next(&mut header),
            Ok(Scan::TooLarge),
            "from the header"
        );
        let mut scanner = Scanner::new(1000);
        let (seen, peak) = feed(&mut scanner, &wire, 512);
        assert_eq!(seen, vec![Scan::TooLarge, Scan::Skipped, Scan::Frame(5)]);
        assert!(peak <= 512 + 2, "buffered {peak} bytes of a skipped reply");
    }

    #[test]
    fn an_array_whose_values_pass_the_cap_fails_and_the_next_reply_parses() {
        let mut wire = b"*4\r\n".to_vec();
        for _ in 0..4 {
            wire.extend_from_slice(b"$300\r\n");
            wire.extend(std::iter::repeat_n(b'v', 300));
            wire.extend_from_slice(b"\r\n");
        }
        let big = wire.len();
        wire.extend_from_slice(b"$2\r\nok\r\n");
        // 4 x 300 bytes: the fourth header takes the reply past 1000.
        let mut scanner = Scanner::new(1000);
        let (seen, peak) = feed(&mut scanner, &wire, 64);
        assert_eq!(seen, vec![Scan::TooLarge, Scan::Skipped, Scan::Frame(8)]);
        assert!(peak < 1000, "held {peak} bytes");
        // Under the cap it is one frame; at every cut it asks for more.
        let mut scanner = Scanner::new(big);
        assert_eq!(
            feed(&mut scanner, &wire, 1).0,
            vec![Scan::Frame(big), Scan::Frame(8)]
        );
        // Endless small elements pass the cap too (framing counts).
        let mut ints = b"*1000000\r\n".to_vec();
        ints.extend(b":1\r\n".repeat(1_000_000));
        let mut scanner = Scanner::new(1000);
        let (seen, peak) = feed(&mut scanner, &ints, 4096);
        assert_eq!(seen, vec![Scan::TooLarge, Scan::Skipped]);
        assert!(peak <= 4096 + 1000, "held {peak} bytes");
    }

    #[test]
    fn a_too_large_reply_complete_in_one_read_is_reported_then_skipped() {
        let mut scanner = Scanner::new(4);
        let mut buf = BytesMut::from(&b"+TOO LONG\r\n:1\r\n"[..]);
        assert_eq!(scanner.next(&mut buf), Ok(Scan::TooLarge));
        assert_eq!(scanner.next(&mut buf), Ok(Scan::Skipped));
        assert_eq!(scanner.next(&mut buf), Ok(Scan::Frame(4)));
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
