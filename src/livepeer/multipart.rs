//! `multipart/mixed` bodies as go-livepeer's `mime/multipart` writes and reads them.
//!
//! The writer mirrors Go's `multipart.Writer` byte for byte (first delimiter without a
//! leading CRLF, canonical header names, closing `--boundary--`). The strict reader is
//! what the test orchestrator uses to check every part.

use std::hash::{BuildHasher, Hasher};

use bytes::Bytes;

/// One part: headers in the order given, then the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Part {
    /// A header's value (names compare case-insensitively, as Go's textproto does).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A fresh 32-hex-digit boundary (random per process and call, no RNG dependency).
pub fn boundary() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    let a = h.finish();
    h.write_u64(a);
    format!("{:016x}{:016x}", a, h.finish())
}

/// Encodes `parts` under `boundary`.
pub fn encode(boundary: &str, parts: &[Part]) -> Vec<u8> {
    let size: usize = parts.iter().map(|p| p.body.len() + 128).sum();
    let mut out = Vec::with_capacity(size + 64);
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"--");
        out.extend_from_slice(boundary.as_bytes());
        out.extend_from_slice(b"\r\n");
        for (k, v) in &part.headers {
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&part.body);
    }
    out.extend_from_slice(b"\r\n--");
    out.extend_from_slice(boundary.as_bytes());
    out.extend_from_slice(b"--\r\n");
    out
}

/// The `boundary` parameter of a `multipart/mixed` content type.
pub fn boundary_of(content_type: &str) -> Option<&str> {
    let (media, params) = content_type.split_once(';')?;
    if !media.trim().eq_ignore_ascii_case("multipart/mixed") {
        return None;
    }
    params.split(';').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"'))
            .filter(|b| !b.is_empty())
    })
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// Strictly decodes a body: every part must be delimited and have well-formed headers.
pub fn decode(boundary: &str, body: &[u8]) -> Result<Vec<Part>, String> {
    let first = format!("--{boundary}");
    let delim = format!("\r\n--{boundary}");
    let start = find(body, first.as_bytes(), 0).ok_or("no opening boundary")?;
    let mut pos = start + first.len();
    let mut parts = Vec::new();
    loop {
        match body.get(pos..pos + 2) {
            Some(b"--") => return Ok(parts),
            Some(b"\r\n") => pos += 2,
            _ => return Err(format!("malformed boundary line at byte {pos}")),
        }
        let head_end = find(body, b"\r\n\r\n", pos)
            .ok_or_else(|| format!("part {} has no header end", parts.len()))?;
        let head = std::str::from_utf8(&body[pos..head_end])
            .map_err(|_| format!("part {} headers are not UTF-8", parts.len()))?;
        let mut headers = Vec::new();
        for line in head.split("\r\n").filter(|l| !l.is_empty()) {
            let (k, v) = line
                .split_once(':')
                .ok_or_else(|| format!("part {} header line {line:?} has no colon", parts.len()))?;
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let data_start = head_end + 4;
        let data_end = find(body, delim.as_bytes(), data_start)
            .ok_or_else(|| format!("part {} is not terminated by the boundary", parts.len()))?;
        parts.push(Part {
            headers,
            body: Bytes::copy_from_slice(&body[data_start..data_end]),
        });
        pos = data_end + delim.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_matches_go_layout() {
        let parts = vec![
            Part {
                headers: vec![
                    ("Content-Type".into(), "video/mp2t".into()),
                    ("Pixels".into(), "10".into()),
                ],
                body: Bytes::from_static(b"abc\r\n--not"),
            },
            Part {
                headers: vec![("Content-Type".into(), "video/mp4".into())],
                body: Bytes::new(),
            },
        ];
        let enc = encode("BND", &parts);
        assert!(enc.starts_with(b"--BND\r\nContent-Type: video/mp2t\r\n"));
        assert!(enc.ends_with(b"\r\n--BND--\r\n"));
        assert_eq!(decode("BND", &enc).unwrap(), parts);
        assert_eq!(boundary_of("multipart/mixed; boundary=BND"), Some("BND"));
        assert_eq!(boundary_of("text/plain; boundary=BND"), None);
        assert_ne!(boundary(), boundary());
    }

    #[test]
    fn truncated_bodies_are_rejected() {
        let enc = encode(
            "B",
            &[Part {
                headers: vec![],
                body: Bytes::from_static(b"x"),
            }],
        );
        assert!(decode("B", &enc[..enc.len() - 8]).is_err());
        assert!(decode("Z", &enc).is_err());
    }
}
