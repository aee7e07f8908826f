//! A strict `multipart/form-data` parser (RFC 7578 / RFC 2046 §5.1) over a body already in
//! memory. The upload endpoint reads whole bodies anyway, so a slice parser is all it needs;
//! being strict (CRLF line ends, a closing delimiter, `form-data` with a `name`), it makes
//! a malformed body fail the test loudly instead of being stored half-understood.

/// One part of a form.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Part<'a> {
    pub(crate) field: String,
    pub(crate) file_name: Option<String>,
    pub(crate) content_type: Option<String>,
    pub(crate) data: &'a [u8],
}

/// The boundary of a `multipart/form-data` content type, `None` for any other type.
pub(crate) fn boundary(content_type: &str) -> Option<String> {
    let (mime, params) = content_type.split_once(';').unwrap_or((content_type, ""));
    if !mime.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params_of(params.as_bytes())
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v)
        .filter(|b| !b.is_empty())
}

/// Splits `body` into its parts.
pub(crate) fn parse<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, String> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    // A preamble may precede the first delimiter.
    let start = if body.starts_with(delimiter) {
        0
    } else {
        find(body, &[b"\r\n", delimiter].concat())
            .map(|at| at + 2)
            .ok_or("no opening boundary")?
    };
    let mut rest = &body[start + delimiter.len()..];
    let mut parts = Vec::new();
    let close = [b"\r\n", delimiter].concat();
    loop {
        if rest.starts_with(b"--") {
            // The closing delimiter; an epilogue may follow.
            return Ok(parts);
        }
        rest = rest
            .strip_prefix(b"\r\n")
            .ok_or("a boundary line must end with CRLF")?;
        let head_end = find(rest, b"\r\n\r\n").ok_or("part headers do not end")?;
        let head = std::str::from_utf8(&rest[..head_end])
            .map_err(|_| "part headers are not UTF-8".to_owned())?;
        let content = &rest[head_end + 4..];
        let end = find(content, &close).ok_or("a part is not followed by a boundary")?;
        let mut part = part_head(head)?;
        part.data = &content[..end];
        parts.push(part);
        rest = &content[end + close.len()..];
    }
}

fn part_head(head: &str) -> Result<Part<'static>, String> {
    let mut field = None;
    let mut file_name = None;
    let mut content_type = None;
    for line in head.split("\r\n") {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("bad part header line {line:?}"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-disposition") {
            let (kind, params) = value.split_once(';').unwrap_or((value, ""));
            if !kind.trim().eq_ignore_ascii_case("form-data") {
                return Err(format!("part disposition {kind:?} is not form-data"));
            }
            for (k, v) in params_of(params.as_bytes()) {
                match k.to_ascii_lowercase().as_str() {
                    "name" => field = Some(v),
                    "filename" => file_name = Some(v),
                    _ => {}
                }
            }
        } else if name.eq_ignore_ascii_case("content-type") {
            content_type = Some(value.to_owned());
        }
    }
    Ok(Part {
        field: field.ok_or("a part has no form-data name")?,
        file_name,
        content_type,
        data: &[],
    })
}

/// `; key=value; key="quoted \" value"` → pairs (backslash escapes undone).
fn params_of(mut s: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    loop {
        while let [b' ' | b'\t' | b';', tail @ ..] = s {
            s = tail;
        }
        let Some(eq) = s.iter().position(|&b| b == b'=') else {
            return out;
        };
        let key = String::from_utf8_lossy(&s[..eq]).trim().to_owned();
        s = &s[eq + 1..];
        let mut value = Vec::new();
        if let [b'"', tail @ ..] = s {
            s = tail;
            loop {
                match s {
                    [b'\\', c, tail @ ..] => {
                        value.push(*c);
                        s = tail;
                    }
                    [b'"', tail @ ..] => {
                        s = tail;
                        break;
                    }
                    [c, tail @ ..] => {
                        value.push(*c);
                        s = tail;
                    }
                    [] => break,
                }
            }
        } else {
            let end = s.iter().position(|&b| b == b';').unwrap_or(s.len());
            value.extend_from_slice(s[..end].trim_ascii());
            s = &s[end..];
        }
        out.push((key, String::from_utf8_lossy(&value).into_owned()));
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_fields_and_files() {
        let body =
            b"preamble\r\n--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\none\r\n\
--XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"q\\\"x;y.bin\"\r\n\
Content-Type: application/octet-stream\r\n\r\n\x00\r\n--X\r\n--XyZ--\r\n";
        let parts = parse(body, "XyZ").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].field, "a");
        assert_eq!(parts[0].data, b"one");
        assert_eq!(parts[0].file_name, None);
        assert_eq!(parts[1].field, "f");
        assert_eq!(parts[1].file_name.as_deref(), Some("q\"x;y.bin"));
        assert_eq!(
            parts[1].content_type.as_deref(),
            Some("application/octet-stream")
        );
        assert_eq!(parts[1].data, b"\x00\r\n--X");
    }

    #[test]
    fn refuses_malformed_bodies() {
        assert!(
            parse(
                b"--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx",
                "b"
            )
            .is_err()
        );
        assert!(parse(b"--b\r\nContent-Disposition: inline\r\n\r\nx\r\n--b--", "b").is_err());
        assert!(parse(b"nothing here", "b").is_err());
    }

    #[test]
    fn finds_the_boundary() {
        assert_eq!(
            boundary("multipart/form-data; boundary=abc").as_deref(),
            Some("abc")
        );
        assert_eq!(
            boundary("Multipart/Form-Data;boundary=\"a b\"").as_deref(),
            Some("a b")
        );
        assert_eq!(boundary("application/octet-stream"), None);
        assert_eq!(boundary("multipart/form-data"), None);
    }
}
