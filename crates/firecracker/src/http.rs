//! HTTP/1.1 as Firecracker's API speaks it: over a unix socket, requests one at a time on
//! a kept-alive connection, bodies sized by `Content-Length` (no chunked encoding), answers
//! with a JSON body or none.
//!
//! A request is read whole before it is answered: the head is parsed by `httparse` once the
//! blank line has come, then exactly `Content-Length` bytes of body are read. Bytes past
//! that stay in the buffer for the next request (pipelining is allowed, answered in
//! order). Heads and bodies have limits (Firecracker's 51,200-byte payload limit); a
//! request over them, or one that does not parse, is answered 400 and the connection
//! closed, since where the next request begins can no longer be known.

use std::io::{Read, Write};

use serde_json::Value;

/// The largest body accepted: Firecracker's default payload limit.
pub const MAX_BODY: usize = 51_200;
/// The largest request head accepted.
const MAX_HEAD: usize = 8 * 1024;
/// The most headers a request may carry.
const MAX_HEADERS: usize = 32;

/// One request.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The path, without its query string.
    pub path: String,
    pub body: Vec<u8>,
    /// The client asked to close the connection after this request (or spoke HTTP/1.0).
    pub close: bool,
}

/// One answer: a status code and, where it has one, a JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub body: Option<Value>,
}

impl Response {
    /// 204 No Content: Firecracker's answer to a request carried out.
    pub fn no_content() -> Response {
        Response { status: 204, body: None }
    }

    /// 200 OK with `body`.
    pub fn ok(body: Value) -> Response {
        Response { status: 200, body: Some(body) }
    }

    /// An error as Firecracker writes it: `{"fault_message": …}`.
    pub fn fault(status: u16, message: impl Into<String>) -> Response {
        Response { status, body: Some(serde_json::json!({ "fault_message": message.into() })) }
    }

    /// 400 Bad Request with a fault message.
    pub fn bad_request(message: impl Into<String>) -> Response {
        Response::fault(400, message)
    }

    /// The fault message, if this is an error.
    pub fn fault_message(&self) -> Option<&str> {
        self.body.as_ref()?.get("fault_message")?.as_str()
    }
}

/// What ends reading a request.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The client closed the connection between requests: no error.
    #[error("the client closed the connection")]
    Closed,
    /// The connection failed.
    #[error("the connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The request cannot be taken: answer this and close.
    #[error("{}", .0.fault_message().unwrap_or("bad request"))]
    Refused(Response),
}

/// Reads requests from one connection, keeping what was read past a request.
pub struct Connection<S> {
    stream: S,
    buf: Vec<u8>,
}

impl<S: Read + Write> Connection<S> {
    pub fn new(stream: S) -> Connection<S> {
        Connection { stream, buf: Vec::new() }
    }

    /// Reads more bytes into the buffer; `Closed` at the end of the stream.
    fn fill(&mut self) -> Result<(), ReadError> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(ReadError::Closed);
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// The next request.
    pub fn read_request(&mut self) -> Result<Request, ReadError> {
        let (head_len, mut request, length, expect_continue) = loop {
            if let Some(parsed) = parse_head(&self.buf)? {
                break parsed;
            }
            if self.buf.len() > MAX_HEAD {
                return Err(refused("The request's head is larger than 8 KiB."));
            }
            match self.fill() {
                Err(ReadError::Closed) if !self.buf.is_empty() => {
                    return Err(refused("The connection closed in the middle of a request."))
                }
                other => other?,
            }
        };
        self.buf.drain(..head_len);
        if length > MAX_BODY {
            return Err(refused(format!(
                "Request payload with size {length} is larger than the limit of {MAX_BODY} \
                 allowed by server."
            )));
        }
        if expect_continue && self.buf.len() < length {
            self.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        while self.buf.len() < length {
            match self.fill() {
                Err(ReadError::Closed) => {
                    return Err(refused(format!(
                        "The body ended after {} of the {length} bytes its Content-Length \
                         announced.",
                        self.buf.len()
                    )))
                }
                other => other?,
            }
        }
        request.body = self.buf.drain(..length).collect();
        Ok(request)
    }

    /// Writes `response`; `close` adds `Connection: close`.
    pub fn write_response(&mut self, response: &Response, close: bool) -> std::io::Result<()> {
        self.stream.write_all(&encode(response, close))
    }
}

fn refused(message: impl Into<String>) -> ReadError {
    ReadError::Refused(Response::bad_request(message))
}

/// Parses a request head: the request (body empty), the head's length, the body's length and
/// whether the client waits for `100 Continue`; `None` while the head is incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<(usize, Request, usize, bool)>, ReadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(refused(format!("The request is not valid HTTP/1.1: {e}."))),
    };
    let method = req.method.unwrap_or_default().to_string();
    let target = req.path.unwrap_or_default();
    let path = target.split(['?', '#']).next().unwrap_or_default().to_string();
    let mut close = req.version == Some(0);
    let (mut length, mut expect_continue) = (0usize, false);
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            length = value.parse().map_err(|_| {
                refused(format!("The Content-Length header is not a number: {value:?}."))
            })?;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(refused(
                "Transfer-Encoding is not supported: send the body with a Content-Length.",
            ));
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close")
                || (close && !value.eq_ignore_ascii_case("keep-alive"));
        } else if h.name.eq_ignore_ascii_case("expect") {
            expect_continue = value.eq_ignore_ascii_case("100-continue");
        }
    }
    Ok(Some((head_len, Request { method, path, body: Vec::new(), close }, length, expect_continue)))
}

/// The bytes of `response` on the wire.
pub fn encode(response: &Response, close: bool) -> Vec<u8> {
    let reason = match response.status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "",
    };
    let mut out =
        format!("HTTP/1.1 {} {reason}\r\nServer: Bulkhead (Firecracker API)\r\n", response.status);
    out.push_str(if close { "Connection: close\r\n" } else { "Connection: keep-alive\r\n" });
    let body = response.body.as_ref().map(|b| b.to_string()).unwrap_or_default();
    if response.body.is_some() {
        out.push_str("Content-Type: application/json\r\n");
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A stream whose reads come from `input` and whose writes are kept.
    struct Pipe {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for Pipe {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            // One byte at a time: every split point of a request is exercised.
            let n = buf.len().min(1);
            self.input.read(&mut buf[..n])
        }
    }

    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn conn(input: &str) -> Connection<Pipe> {
        Connection::new(Pipe { input: Cursor::new(input.as_bytes().to_vec()), output: Vec::new() })
    }

    #[test]
    fn two_requests_on_one_connection() {
        let mut c = conn(
            "PUT /drives/root?x=1 HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}\
             GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        );
        let r = c.read_request().unwrap();
        assert_eq!(
            (r.method.as_str(), r.path.as_str(), &r.body[..], r.close),
            ("PUT", "/drives/root", &b"{}"[..], false)
        );
        let r = c.read_request().unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str(), r.close), ("GET", "/", true));
        assert!(matches!(c.read_request(), Err(ReadError::Closed)));
    }

    #[test]
    fn expect_continue_is_answered_before_the_body() {
        let mut c = conn("PUT /a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx");
        assert_eq!(c.read_request().unwrap().body, b"x");
        assert_eq!(c.stream.output, b"HTTP/1.1 100 Continue\r\n\r\n");
    }

    #[test]
    fn oversized_chunked_and_broken_requests_are_refused() {
        let big = format!("PUT /a HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1);
        for input in [
            big.as_str(),
            "PUT /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "PUT /a HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            "PUT /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nab",
            "NOT HTTP\r\n\r\n",
        ] {
            match conn(input).read_request() {
                Err(ReadError::Refused(r)) => assert_eq!(r.status, 400, "{input}"),
                other => panic!("{input}: {other:?}"),
            }
        }
    }

    #[test]
    fn responses_carry_their_length() {
        let bytes = encode(&Response::bad_request("no"), false);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(text.ends_with("Content-Length: 22\r\n\r\n{\"fault_message\":\"no\"}"), "{text}");
        let text = String::from_utf8(encode(&Response::no_content(), true)).unwrap();
        assert!(
            text.contains("Connection: close\r\n") && text.ends_with("Content-Length: 0\r\n\r\n")
        );
    }
}
