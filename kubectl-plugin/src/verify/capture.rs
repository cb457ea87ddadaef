//! A captured webhook request, as a person saves it: raw HTTP/1.1 text (request line, headers,
//! blank line, body — what `nc -l` or a proxy dump shows; the request line may be left out), or
//! JSON `{"headers": {...}, "body": "..."}`. [`parse`] turns either into headers and the exact
//! body bytes the signature covers. Pure.
//!
//! # Decisions
//! - With a `content-length`, the body is cut to it: an editor's trailing newline would
//!   otherwise break every signature. A body shorter than it is refused as a cut capture.
//! - A `transfer-encoding: chunked` body is de-chunked: the signature covers the payload.

use serde::Deserialize;

/// A request's headers (names lowercased) and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    /// Headers in order, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body bytes.
    pub body: Vec<u8>,
}

impl Captured {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonCapture {
    headers: std::collections::BTreeMap<String, HeaderValue>,
    body: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum HeaderValue {
    One(String),
    Many(Vec<String>),
}

/// Reads a capture (see the module docs).
///
/// # Errors
/// A message saying what is wrong with the input.
pub fn parse(input: &[u8]) -> Result<Captured, String> {
    let start = input
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .ok_or("the input is empty: pipe the captured request into stdin")?;
    if input[start] == b'{' {
        return json(&input[start..]);
    }
    http(&input[start..])
}

fn json(input: &[u8]) -> Result<Captured, String> {
    let c: JsonCapture = serde_json::from_slice(input).map_err(|e| {
        format!("the input looks like JSON but is not {{\"headers\": {{...}}, \"body\": \"...\"}} with the body as a string of the exact bytes received: {e}")
    })?;
    let headers = c
        .headers
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                HeaderValue::One(v) => v,
                HeaderValue::Many(vs) => vs.join(" "),
            };
            (k.to_ascii_lowercase(), v)
        })
        .collect();
    Ok(Captured {
        headers,
        body: c.body.into_bytes(),
    })
}

fn http(input: &[u8]) -> Result<Captured, String> {
    let (head, rest) = split_head(input);
    let head = std::str::from_utf8(head).map_err(|_| "the request's headers are not text")?;
    let mut headers = Vec::new();
    for (i, line) in head.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if i == 0 && line.contains(" HTTP/") {
            continue;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("line {} is not a header (name: value): {line:?}", i + 1))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let mut captured = Captured {
        headers,
        body: rest.to_vec(),
    };
    let chunked = captured
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    if chunked {
        captured.body = dechunk(rest)?;
    } else if let Some(len) = captured.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| format!("content-length {len:?} is not a number"))?;
        if rest.len() < len {
            return Err(format!(
                "the body is {} bytes but content-length says {len}: the capture is cut short",
                rest.len()
            ));
        }
        captured.body.truncate(len);
    }
    Ok(captured)
}

/// The head (up to the first blank line) and the rest.
fn split_head(input: &[u8]) -> (&[u8], &[u8]) {
    let crlf = find(input, b"\r\n\r\n").map(|i| (i, 4));
    let lf = find(input, b"\n\n").map(|i| (i, 2));
    let end = match (crlf, lf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    };
    match end {
        Some((i, n)) => (&input[..i], &input[i + n..]),
        None => (input, &[]),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut input: &[u8]) -> Result<Vec<u8>, String> {
    let bad = || "the chunked body is malformed or cut short".to_owned();
    let mut out = Vec::new();
    loop {
        let eol = find(input, b"\r\n").ok_or_else(bad)?;
        let size_text = std::str::from_utf8(&input[..eol]).map_err(|_| bad())?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad())?;
        input = &input[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if input.len() < size + 2 {
            return Err(bad());
        }
        out.extend_from_slice(&input[..size]);
        input = &input[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_http_gives_lowercased_headers_and_the_body_cut_to_content_length() {
        let raw = b"POST /orders HTTP/1.1\r\nHost: x\r\nWebhook-Id: evt_1\r\ncontent-length: 7\r\n\r\n{\"a\":1}\n";
        let c = parse(raw).unwrap();
        assert_eq!(c.header("webhook-id"), Some("evt_1"));
        assert_eq!(c.headers[0].0, "host");
        assert_eq!(c.body, b"{\"a\":1}");
        let cut = b"POST / HTTP/1.1\r\ncontent-length: 70\r\n\r\n{}";
        assert!(parse(cut).unwrap_err().contains("cut short"));
    }

    #[test]
    fn headers_alone_with_lf_line_ends_and_no_request_line_are_accepted() {
        let c = parse(b"\nwebhook-id: e\nwebhook-timestamp: 1\n\n{}").unwrap();
        assert_eq!(
            (c.header("WEBHOOK-ID"), c.body.as_slice()),
            (Some("e"), &b"{}"[..])
        );
        assert!(
            parse(b"POST / HTTP/1.1\r\nnot a header\r\n\r\n")
                .unwrap_err()
                .contains("line 2")
        );
        assert!(parse(b"  \n").unwrap_err().contains("empty"));
    }

    #[test]
    fn a_chunked_body_is_dechunked() {
        let raw = b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3;x=y\r\n:1}\r\n0\r\n\r\n";
        assert_eq!(parse(raw).unwrap().body, b"{\"a\":1}");
        let cut = b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n9\r\n{\"a\"";
        assert!(parse(cut).is_err());
    }

    #[test]
    fn json_captures_take_the_body_as_a_string_and_lists_of_header_values() {
        let c = parse(br#" {"headers": {"Webhook-Signature": ["v1,a", "v1,b"], "webhook-id": "e"}, "body": "{\"a\":1}"}"#).unwrap();
        assert_eq!(c.header("webhook-signature"), Some("v1,a v1,b"));
        assert_eq!(c.body, br#"{"a":1}"#);
        let object_body = br#"{"headers": {}, "body": {"a": 1}}"#;
        assert!(parse(object_body).unwrap_err().contains("exact bytes"));
    }
}
