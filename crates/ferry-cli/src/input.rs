//! `ferry get -i FILE`: aria2-style input files.
//!
//! ```text
//! # a comment
//! https://example.com/a.iso
//!   out=images/a.iso
//!   sha256=9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//! https://example.com/b.iso
//! ```
//!
//! A line that starts with a letter is a URL; indented `key=value` lines under it set that
//! download's options: `out` (its file; relative paths are under `-d DIR` or the current
//! folder), `dir` (its folder), `sha256` (hex) or `checksum` (`ALGO:HEX`). Blank lines and
//! lines starting with `#` are skipped.

use std::fmt;

/// One download of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its line number (1-based), for messages.
    pub line: usize,
    pub url: String,
    pub out: Option<String>,
    pub dir: Option<String>,
    /// `ALGO:HEX`.
    pub checksum: Option<String>,
}

/// What was wrong, and on which line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for InputError {}

pub fn parse(text: &str) -> Result<Vec<Entry>, InputError> {
    let mut entries: Vec<Entry> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let fail = |message: String| Err(InputError { line, message });
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indented = raw.starts_with([' ', '\t']);
        if !indented {
            if trimmed.contains(char::is_whitespace) {
                return fail(format!(
                    "{trimmed:?} holds a space; give one URL per line (options go on indented \
                     lines below it)"
                ));
            }
            if !(trimmed.starts_with("http://") || trimmed.starts_with("https://")) {
                return fail(format!(
                    "{trimmed:?} is not an http:// or https:// URL (options go on indented \
                     lines below their URL)"
                ));
            }
            entries.push(Entry {
                line,
                url: trimmed.to_owned(),
                out: None,
                dir: None,
                checksum: None,
            });
            continue;
        }
        let Some(entry) = entries.last_mut() else {
            return fail(format!("option {trimmed:?} comes before any URL"));
        };
        let Some((key, value)) = trimmed.split_once('=') else {
            return fail(format!("{trimmed:?} is not a key=value option"));
        };
        let (key, value) = (key.trim(), value.trim());
        if value.is_empty() {
            return fail(format!("option {key:?} has no value"));
        }
        let slot = match key {
            "out" => &mut entry.out,
            "dir" => &mut entry.dir,
            "sha256" => {
                if !(value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit())) {
                    return fail(format!("sha256 {value:?} is not 64 hex digits"));
                }
                if entry.checksum.is_some() {
                    return fail("a second checksum for the same URL".to_owned());
                }
                entry.checksum = Some(format!("sha256:{value}"));
                continue;
            }
            "checksum" => {
                if entry.checksum.is_some() {
                    return fail("a second checksum for the same URL".to_owned());
                }
                if !value.contains(':') {
                    return fail(format!("checksum {value:?} must look like ALGO:HEX"));
                }
                entry.checksum = Some(value.to_owned());
                continue;
            }
            other => {
                return fail(format!(
                    "unknown option {other:?} (known: out, dir, sha256, checksum)"
                ));
            }
        };
        if slot.is_some() {
            return fail(format!("option {key:?} given twice for the same URL"));
        }
        *slot = Some(value.to_owned());
        if entry.out.is_some() && entry.dir.is_some() {
            return fail("out and dir exclude each other (out may hold a folder)".to_owned());
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn reads_urls_with_their_indented_options() {
        let text = format!(
            "# list\nhttp://h/a\n  out=x/a.bin\n\tsha256={HASH}\n\nhttps://h/b\n  dir=/tmp/d\n"
        );
        let entries = parse(&text).unwrap();
        assert_eq!(
            entries,
            vec![
                Entry {
                    line: 2,
                    url: "http://h/a".into(),
                    out: Some("x/a.bin".into()),
                    dir: None,
                    checksum: Some(format!("sha256:{HASH}")),
                },
                Entry {
                    line: 6,
                    url: "https://h/b".into(),
                    out: None,
                    dir: Some("/tmp/d".into()),
                    checksum: None,
                },
            ]
        );
    }

    #[test]
    fn a_bad_line_is_named_with_what_is_wrong() {
        let cases = [
            ("  out=a\nhttp://h/a\n", 1, "before any URL"),
            ("http://h/a\n  colour=red\n", 2, "unknown option \"colour\""),
            ("http://h/a\n  out=a\n  out=b\n", 3, "given twice"),
            ("http://h/a\n  sha256=abc\n", 2, "64 hex digits"),
            ("http://h/a\nftp://h/b\n", 2, "not an http"),
            ("http://h/a http://h/b\n", 1, "one URL per line"),
            ("http://h/a\n  out\n", 2, "key=value"),
            ("http://h/a\n  out=\n", 2, "no value"),
        ];
        for (text, line, needle) in cases {
            let error = parse(text).unwrap_err();
            assert_eq!(error.line, line, "{text:?}: {error}");
            assert!(error.to_string().contains(needle), "{text:?}: {error}");
        }
    }
}
