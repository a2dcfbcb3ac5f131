//! Splitting a fuzz input into the pieces a target needs.

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// The input's lines (split on `\n`, a trailing `\r` dropped), as bytes.
pub fn lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l))
}

/// The first line and everything after it.
pub fn first_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (data[..i].strip_suffix(b"\r").unwrap_or(&data[..i]), &data[i + 1..]),
        None => (data, &[]),
    }
}

/// One `name: value` header line as a client could send it; `None` when the
/// name or value is not one HTTP can carry (the proxy never sees those).
pub fn header_line(line: &[u8]) -> Option<(HeaderName, HeaderValue)> {
    let (name, value) = match line.iter().position(|&b| b == b':') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &[][..]),
    };
    let name = HeaderName::from_bytes(name).ok()?;
    // A parser drops the optional whitespace around a field value.
    let value = HeaderValue::from_bytes(value.trim_ascii()).ok()?;
    Some((name, value))
}

/// Every header line that HTTP can carry, in order, appended (repeats kept).
pub fn header_map<'a>(lines: impl Iterator<Item = &'a [u8]>) -> (HeaderMap, Vec<(HeaderName, HeaderValue)>) {
    let mut map = HeaderMap::new();
    let mut list = Vec::new();
    for (name, value) in lines.take(64).filter_map(header_line) {
        map.append(name.clone(), value.clone());
        list.push((name, value));
    }
    (map, list)
}

/// A decimal number at the start of `text`, if any.
pub fn number(text: &[u8]) -> Option<u64> {
    std::str::from_utf8(text).ok()?.trim().parse().ok()
}
