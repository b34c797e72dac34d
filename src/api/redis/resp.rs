//! The Redis serialization protocol: requests (arrays of bulk strings, or inline lines
//! as telnet and `redis-cli` pipes send them) parsed with Redis's limits and its error
//! texts, and replies written in RESP2 or RESP3.

use bytes::{Buf, Bytes, BytesMut};

/// Longest inline request, and longest multibulk or bulk header line (Redis's
/// PROTO_INLINE_MAX_SIZE).
pub const INLINE_MAX: usize = 64 * 1024;
/// Most arguments in one request (Redis allows 1024*1024 elements too).
pub const ARGS_MAX: usize = 1024 * 1024;

/// A request that breaks the protocol: answered with `-ERR Protocol error: ...`, then
/// the connection is closed, as Redis does.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("Protocol error: too big inline request")]
    InlineTooBig,
    #[error("Protocol error: too big mbulk count string")]
    MultibulkHeaderTooBig,
    #[error("Protocol error: too big bulk count string")]
    BulkHeaderTooBig,
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    #[error("Protocol error: expected '$', got '{0}'")]
    ExpectedBulk(char),
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    #[error("Protocol error: unauthenticated multibulk length")]
    UnauthenticatedMultibulkLength,
    #[error("Protocol error: unauthenticated bulk length")]
    UnauthenticatedBulkLength,
}

/// What a connection that has not authenticated (auth on) may send, as Redis limits it:
/// enough for AUTH and HELLO, not a way to make the server buffer megabytes.
const UNAUTHENTICATED_ARGS_MAX: i64 = 10;
const UNAUTHENTICATED_BULK_MAX: i64 = 16 * 1024;

/// Parses one request from the front of `buffer`: `Ok(None)` when it is not complete
/// yet (nothing is consumed), `Ok(Some(args))` (consumed; an empty line gives no
/// arguments, which callers skip), or the protocol error.
pub fn parse(buffer: &mut BytesMut, max_bulk: usize) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    parse_limited(buffer, max_bulk, false)
}

/// [`parse`], with the tighter limits of a connection that must authenticate first.
pub fn parse_limited(
    buffer: &mut BytesMut,
    max_bulk: usize,
    unauthenticated: bool,
) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    if buffer.is_empty() {
        return Ok(None);
    }
    if buffer[0] == b'*' {
        parse_multibulk(buffer, max_bulk, unauthenticated)
    } else {
        parse_inline(buffer)
    }
}

/// The line at `from` (without its `\r\n`) and where the next one starts.
fn line_at(buffer: &[u8], from: usize) -> Option<(&[u8], usize)> {
    let end = buffer[from..].windows(2).position(|pair| pair == b"\r\n")?;
    Some((&buffer[from..from + end], from + end + 2))
}

fn parse_number(digits: &[u8]) -> Option<i64> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn parse_multibulk(
    buffer: &mut BytesMut,
    max_bulk: usize,
    unauthenticated: bool,
) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    let Some((header, mut at)) = line_at(buffer, 0) else {
        if buffer.len() > INLINE_MAX {
            return Err(ProtocolError::MultibulkHeaderTooBig);
        }
        return Ok(None);
    };
    let count = parse_number(&header[1..]).ok_or(ProtocolError::InvalidMultibulkLength)?;
    if count > ARGS_MAX as i64 {
        return Err(ProtocolError::InvalidMultibulkLength);
    }
    if unauthenticated && count > UNAUTHENTICATED_ARGS_MAX {
        return Err(ProtocolError::UnauthenticatedMultibulkLength);
    }
    if count <= 0 {
        buffer.advance(at);
        return Ok(Some(Vec::new()));
    }
    // Positions first: nothing is consumed until the whole request is here.
    let mut spans = Vec::with_capacity((count as usize).min(1024));
    for _ in 0..count {
        if at >= buffer.len() {
            return Ok(None);
        }
        if buffer[at] != b'$' {
            return Err(ProtocolError::ExpectedBulk(buffer[at] as char));
        }
        let Some((bulk_header, data)) = line_at(buffer, at) else {
            if buffer.len() - at > INLINE_MAX {
                return Err(ProtocolError::BulkHeaderTooBig);
            }
            return Ok(None);
        };
        let length = parse_number(&bulk_header[1..]).ok_or(ProtocolError::InvalidBulkLength)?;
        if length < 0 || length as u64 > max_bulk as u64 {
            return Err(ProtocolError::InvalidBulkLength);
        }
        if unauthenticated && length > UNAUTHENTICATED_BULK_MAX {
            return Err(ProtocolError::UnauthenticatedBulkLength);
        }
        let end = data + length as usize;
        if buffer.len() < end + 2 {
            return Ok(None);
        }
        spans.push((data, end));
        at = end + 2;
    }
    let request = buffer.split_to(at).freeze();
    Ok(Some(
        spans
            .into_iter()
            .map(|(start, end)| request.slice(start..end))
            .collect(),
    ))
}

fn parse_inline(buffer: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    let Some(newline) = buffer.iter().position(|&byte| byte == b'\n') else {
        if buffer.len() > INLINE_MAX {
            return Err(ProtocolError::InlineTooBig);
        }
        return Ok(None);
    };
    if newline > INLINE_MAX {
        return Err(ProtocolError::InlineTooBig);
    }
    let line = buffer.split_to(newline + 1);
    let mut text = &line[..newline];
    if text.last() == Some(&b'\r') {
        text = &text[..text.len() - 1];
    }
    split_args(text).map(|args| Some(args.into_iter().map(Bytes::from).collect()))
}

/// Splits an inline request as Redis's `sdssplitargs` does: blanks separate arguments;
/// "double quotes" take \n \r \t \b \a \\ \" and \xHH escapes; 'single quotes' take
/// \'; a closing quote must be followed by a blank or the end.
pub fn split_args(line: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
    let mut args = Vec::new();
    let mut at = 0;
    let blank = |byte: u8| matches!(byte, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c);
    loop {
        while at < line.len() && blank(line[at]) {
            at += 1;
        }
        if at >= line.len() {
            return Ok(args);
        }
        let mut current = Vec::new();
        let mut in_double = false;
        let mut in_single = false;
        loop {
            let byte = line.get(at).copied();
            if in_double {
                match byte {
                    None => return Err(ProtocolError::UnbalancedQuotes),
                    Some(b'\\')
                        if line.get(at + 1) == Some(&b'x')
                            && line.get(at + 2).is_some_and(u8::is_ascii_hexdigit)
                            && line.get(at + 3).is_some_and(u8::is_ascii_hexdigit) =>
                    {
                        let hex = std::str::from_utf8(&line[at + 2..at + 4]).unwrap_or("0");
                        current.push(u8::from_str_radix(hex, 16).unwrap_or(0));
                        at += 3;
                    }
                    Some(b'\\') if at + 1 < line.len() => {
                        at += 1;
                        current.push(match line[at] {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 0x08,
                            b'a' => 0x07,
                            other => other,
                        });
                    }
                    Some(b'"') => {
                        if line.get(at + 1).is_some_and(|&next| !blank(next)) {
                            return Err(ProtocolError::UnbalancedQuotes);
                        }
                        in_double = false;
                        at += 1;
                        break;
                    }
                    Some(other) => current.push(other),
                }
            } else if in_single {
                match byte {
                    None => return Err(ProtocolError::UnbalancedQuotes),
                    Some(b'\\') if line.get(at + 1) == Some(&b'\'') => {
                        at += 1;
                        current.push(b'\'');
                    }
                    Some(b'\'') => {
                        if line.get(at + 1).is_some_and(|&next| !blank(next)) {
                            return Err(ProtocolError::UnbalancedQuotes);
                        }
                        in_single = false;
                        at += 1;
                        break;
                    }
                    Some(other) => current.push(other),
                }
            } else {
                match byte {
                    None => break,
                    Some(next) if blank(next) => break,
                    Some(b'"') => in_double = true,
                    Some(b'\'') => in_single = true,
                    Some(other) => current.push(other),
                }
            }
            at += 1;
        }
        debug_assert!(!in_double && !in_single);
        args.push(current);
    }
}

/// One reply. Types RESP2 lacks are written as their RESP2 equivalents, as Redis does.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    Simple(String),
    /// The whole error line after `-`, its code included ("ERR ...", "WRONGTYPE ...").
    Error(String),
    Integer(i64),
    Bulk(Bytes),
    /// A missing value: `$-1` in RESP2, `_` in RESP3.
    Null,
    /// A missing array (EXEC aborted, blocking timeouts): `*-1` in RESP2, `_` in RESP3.
    NullArray,
    Array(Vec<Reply>),
    /// Field-value pairs: a flat array in RESP2.
    Map(Vec<(Reply, Reply)>),
    /// Unordered members: an array in RESP2.
    Set(Vec<Reply>),
    /// A bulk string in RESP2.
    Double(f64),
    /// An integer 1/0 in RESP2.
    Boolean(bool),
    /// Text with a format tag ("txt"): a bulk string in RESP2.
    Verbatim(String),
    /// Out-of-band data (pub/sub messages): an array in RESP2.
    Push(Vec<Reply>),
    /// Several replies to one request, one after the other (SUBSCRIBE a b).
    Sequence(Vec<Reply>),
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::Simple("OK".into())
    }

    pub fn error(text: impl Into<String>) -> Reply {
        Reply::Error(text.into())
    }

    pub fn bulk(data: impl Into<Bytes>) -> Reply {
        Reply::Bulk(data.into())
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    /// Appends the reply to `out` in protocol version `resp` (2 or 3).
    pub fn write(&self, out: &mut Vec<u8>, resp: u8) {
        let resp3 = resp >= 3;
        match self {
            Reply::Simple(text) => line(out, b'+', text.as_bytes()),
            Reply::Error(text) => {
                // An error line cannot hold a newline.
                let clean: String = text
                    .chars()
                    .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
                    .collect();
                line(out, b'-', clean.as_bytes());
            }
            Reply::Integer(value) => line(out, b':', value.to_string().as_bytes()),
            Reply::Bulk(data) => bulk(out, data),
            Reply::Null if resp3 => out.extend_from_slice(b"_\r\n"),
            Reply::Null => out.extend_from_slice(b"$-1\r\n"),
            Reply::NullArray if resp3 => out.extend_from_slice(b"_\r\n"),
            Reply::NullArray => out.extend_from_slice(b"*-1\r\n"),
            Reply::Array(items) => {
                line(out, b'*', items.len().to_string().as_bytes());
                for item in items {
                    item.write(out, resp);
                }
            }
            Reply::Set(items) => {
                line(out, if resp3 { b'~' } else { b'*' }, items.len().to_string().as_bytes());
                for item in items {
                    item.write(out, resp);
                }
            }
            Reply::Map(pairs) => {
                if resp3 {
                    line(out, b'%', pairs.len().to_string().as_bytes());
                } else {
                    line(out, b'*', (pairs.len() * 2).to_string().as_bytes());
                }
                for (key, value) in pairs {
                    key.write(out, resp);
                    value.write(out, resp);
                }
            }
            Reply::Double(value) if resp3 => line(out, b',', format_double(*value).as_bytes()),
            Reply::Double(value) => bulk(out, format_double(*value).as_bytes()),
            Reply::Boolean(value) if resp3 => line(out, b'#', if *value { b"t" } else { b"f" }),
            Reply::Boolean(value) => line(out, b':', if *value { b"1" } else { b"0" }),
            Reply::Verbatim(text) if resp3 => {
                let body = format!("txt:{text}");
                line(out, b'=', body.len().to_string().as_bytes());
                out.extend_from_slice(body.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Reply::Verbatim(text) => bulk(out, text.as_bytes()),
            Reply::Push(items) => {
                line(out, if resp3 { b'>' } else { b'*' }, items.len().to_string().as_bytes());
                for item in items {
                    item.write(out, resp);
                }
            }
            Reply::Sequence(replies) => {
                for reply in replies {
                    reply.write(out, resp);
                }
            }
        }
    }
}

fn line(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
}

fn bulk(out: &mut Vec<u8>, data: &[u8]) {
    line(out, b'$', data.len().to_string().as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// A double as Redis prints one: the shortest text that reads back as the same value,
/// integers without a fraction, "inf" and "-inf".
pub fn format_double(value: f64) -> String {
    if value.is_infinite() {
        return if value > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if value.is_nan() {
        return "nan".into();
    }
    if value == value.trunc() && value.abs() < 1e17 {
        return format!("{}", value as i64);
    }
    format!("{value}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Result<Vec<Vec<Bytes>>, ProtocolError> {
        let mut buffer = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(args) = parse(&mut buffer, 1024)? {
            out.push(args);
        }
        Ok(out)
    }

    fn strings(args: &[Bytes]) -> Vec<&str> {
        args.iter().map(|arg| std::str::from_utf8(arg).unwrap()).collect()
    }

    #[test]
    fn a_connection_that_must_authenticate_gets_redis_tighter_limits() {
        let limited = |input: &[u8]| parse_limited(&mut BytesMut::from(input), 1 << 20, true);
        let auth = b"*3\r\n$4\r\nAUTH\r\n$5\r\nalice\r\n$6\r\nsecret\r\n";
        assert_eq!(
            strings(&limited(auth).unwrap().unwrap()),
            vec!["AUTH", "alice", "secret"]
        );
        assert_eq!(limited(b"*11\r\n"), Err(ProtocolError::UnauthenticatedMultibulkLength));
        assert_eq!(
            limited(b"*1\r\n$20000\r\n"),
            Err(ProtocolError::UnauthenticatedBulkLength)
        );
        let big = parse_limited(&mut BytesMut::from(&b"*1\r\n$20000\r\n"[..]), 1 << 20, false);
        assert_eq!(big, Ok(None), "authenticated, it waits for the rest");
    }

    #[test]
    fn pipelined_multibulk_requests_parse_one_by_one_and_wait_for_the_rest() {
        let input = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n*1\r\n$4\r\nPI";
        let mut buffer = BytesMut::from(&input[..]);
        assert_eq!(strings(&parse(&mut buffer, 1024).unwrap().unwrap()), ["GET", "k"]);
        assert_eq!(strings(&parse(&mut buffer, 1024).unwrap().unwrap()), ["SET", "k", ""]);
        assert_eq!(parse(&mut buffer, 1024).unwrap(), None);
        assert_eq!(&buffer[..], b"*1\r\n$4\r\nPI", "an incomplete request is left in place");
        buffer.extend_from_slice(b"NG\r\n");
        assert_eq!(strings(&parse(&mut buffer, 1024).unwrap().unwrap()), ["PING"]);
        assert!(buffer.is_empty());
    }

    #[test]
    fn inline_requests_split_like_redis() {
        let parsed = parse_all(b"set k \"a b\\x41\\n\" 'it\\'s'\r\nPING\n\r\n").unwrap();
        assert_eq!(parsed[0].len(), 4);
        assert_eq!(&parsed[0][2][..], b"a bA\n");
        assert_eq!(&parsed[0][3][..], b"it's");
        assert_eq!(strings(&parsed[1]), ["PING"]);
        assert!(parsed[2].is_empty(), "an empty line is no command");
        assert_eq!(parse_all(b"set k \"abc\n"), Err(ProtocolError::UnbalancedQuotes));
        assert_eq!(parse_all(b"set k \"abc\"def\n"), Err(ProtocolError::UnbalancedQuotes));
        assert_eq!(parse_all(b"set k 'abc\n"), Err(ProtocolError::UnbalancedQuotes));
    }

    #[test]
    fn limits_give_redis_errors() {
        assert_eq!(parse_all(b"*1\r\n$2000\r\n"), Err(ProtocolError::InvalidBulkLength));
        assert_eq!(parse_all(b"*1\r\n$-5\r\n"), Err(ProtocolError::InvalidBulkLength));
        assert_eq!(parse_all(b"*x\r\n"), Err(ProtocolError::InvalidMultibulkLength));
        assert_eq!(parse_all(b"*99999999\r\n"), Err(ProtocolError::InvalidMultibulkLength));
        assert_eq!(parse_all(b"*1\r\n:1\r\n"), Err(ProtocolError::ExpectedBulk(':')));
        assert_eq!(parse_all(&vec![b'a'; INLINE_MAX + 1]), Err(ProtocolError::InlineTooBig));
        let mut header = b"*".to_vec();
        header.extend(vec![b'1'; INLINE_MAX + 1]);
        assert_eq!(parse_all(&header), Err(ProtocolError::MultibulkHeaderTooBig));
        assert_eq!(
            ProtocolError::UnbalancedQuotes.to_string(),
            "Protocol error: unbalanced quotes in request"
        );
    }

    #[test]
    fn replies_in_both_protocol_versions() {
        let reply = Reply::Array(vec![
            Reply::Null,
            Reply::Double(1.5),
            Reply::Boolean(true),
            Reply::Map(vec![(Reply::bulk("a"), Reply::Integer(1))]),
        ]);
        let mut two = Vec::new();
        reply.write(&mut two, 2);
        assert_eq!(two, b"*4\r\n$-1\r\n$3\r\n1.5\r\n:1\r\n*2\r\n$1\r\na\r\n:1\r\n");
        let mut three = Vec::new();
        reply.write(&mut three, 3);
        assert_eq!(three, b"*4\r\n_\r\n,1.5\r\n#t\r\n%1\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(format_double(3.0), "3");
        assert_eq!(format_double(10.5), "10.5");
        assert_eq!(format_double(f64::INFINITY), "inf");
    }
}
