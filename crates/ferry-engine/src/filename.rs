//! File names chosen by servers, made safe (SPEC §10).
//!
//! A name from `Content-Disposition` or from the URL path is untrusted input: after
//! [`sanitize`] it is a single path component that cannot leave the target folder.

use percent_encoding::percent_decode_str;
use url::Url;

/// Longest name kept, in bytes (the common `NAME_MAX`).
const MAX_NAME_BYTES: usize = 255;

/// The name to save a response under: `Content-Disposition` first, then the URL's last path
/// segment, then `download`.
pub fn choose(content_disposition: Option<&str>, url: &Url) -> String {
    content_disposition
        .and_then(from_content_disposition)
        .and_then(|n| sanitize(&n))
        .or_else(|| from_url(url))
        .unwrap_or_else(|| "download".to_owned())
}

fn from_url(url: &Url) -> Option<String> {
    let last = url.path_segments()?.rev().find(|s| !s.is_empty())?;
    sanitize(&percent_decode_str(last).decode_utf8_lossy())
}

/// The file name a `Content-Disposition` value proposes: `filename*` (RFC 5987/8187) wins
/// over `filename`. Not yet sanitised.
pub fn from_content_disposition(value: &str) -> Option<String> {
    let mut plain = None;
    let mut extended = None;
    for (name, val) in parameters(value) {
        if name.eq_ignore_ascii_case("filename*") {
            extended = decode_ext_value(&val);
        } else if name.eq_ignore_ascii_case("filename") {
            plain = Some(val);
        }
    }
    extended.or(plain)
}

/// `name=value` pairs after the disposition type; values may be quoted strings.
fn parameters(value: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = match value.split_once(';') {
        Some((_, rest)) => rest,
        None => return out,
    };
    loop {
        rest = rest.trim_start_matches([' ', '\t', ';']);
        let Some(eq) = rest.find('=') else { break };
        let name = rest[..eq].trim().to_owned();
        rest = rest[eq + 1..].trim_start();
        let val;
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut s = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            s.push(escaped);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => s.push(c),
                }
            }
            val = s;
            rest = &quoted[end.min(quoted.len())..];
        } else {
            let end = rest.find(';').unwrap_or(rest.len());
            val = rest[..end].trim().to_owned();
            rest = &rest[end..];
        }
        out.push((name, val));
    }
    out
}

/// `UTF-8'lang'percent-encoded` → text. Only UTF-8 and ISO-8859-1 are accepted.
fn decode_ext_value(value: &str) -> Option<String> {
    let mut parts = value.splitn(3, '\'');
    let charset = parts.next()?;
    let _language = parts.next()?;
    let encoded = parts.next()?;
    let bytes: Vec<u8> = percent_decode_str(encoded).collect();
    if charset.eq_ignore_ascii_case("utf-8") {
        String::from_utf8(bytes).ok()
    } else if charset.eq_ignore_ascii_case("iso-8859-1") {
        Some(bytes.into_iter().map(char::from).collect())
    } else {
        None
    }
}

/// Makes an untrusted name a safe single path component, or `None` when nothing usable is
/// left. Keeps only what follows the last `/` or `\`; drops control characters; refuses
/// `.` and `..`; trims leading and trailing whitespace and trailing dots; caps the length at
/// 255 bytes, keeping the extension.
pub fn sanitize(name: &str) -> Option<String> {
    let last = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let cleaned: String = last.chars().filter(|c| !c.is_control()).collect();
    let trimmed = cleaned.trim().trim_end_matches('.').trim_end();
    if trimmed.is_empty() || trimmed == "." || trimmed == ".." {
        return None;
    }
    Some(truncate_keeping_extension(trimmed, MAX_NAME_BYTES))
}

fn truncate_keeping_extension(name: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_owned();
    }
    let (stem, ext) = match name.rfind('.') {
        Some(dot) if dot > 0 && name.len() - dot <= 16 => (&name[..dot], &name[dot..]),
        _ => (name, ""),
    };
    let mut cut = max - ext.len();
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{}", &stem[..cut], ext)
}

/// `name (n).ext` — the candidate names tried when the destination exists and the policy is
/// `rename`.
pub fn numbered(name: &str, n: u32) -> String {
    match name.rfind('.') {
        Some(dot) if dot > 0 => format!("{} ({n}){}", &name[..dot], &name[dot..]),
        _ => format!("{name} ({n})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_stay_inside_the_folder() {
        let cases = [
            ("../../etc/passwd", Some("passwd")),
            ("/etc/shadow", Some("shadow")),
            ("..\\..\\windows\\system32", Some("system32")),
            ("..", None),
            (".", None),
            ("a/..", None),
            ("evil\u{0}name\n.txt", Some("evilname.txt")),
            ("   ", None),
            ("report.pdf...", Some("report.pdf")),
            ("ok name.tar.gz", Some("ok name.tar.gz")),
        ];
        for (input, expected) in cases {
            assert_eq!(sanitize(input).as_deref(), expected, "{input:?}");
        }
    }

    #[test]
    fn long_names_are_cut_keeping_the_extension() {
        let long = format!("{}.iso", "é".repeat(200));
        let cut = sanitize(&long).unwrap();
        assert!(cut.len() <= 255);
        assert!(cut.ends_with(".iso"));
    }

    #[test]
    fn content_disposition_forms() {
        let cd = |v: &str| from_content_disposition(v);
        assert_eq!(
            cd("attachment; filename=plain.bin").as_deref(),
            Some("plain.bin")
        );
        assert_eq!(
            cd(r#"attachment; filename="quoted \"x\".bin""#).as_deref(),
            Some(r#"quoted "x".bin"#)
        );
        assert_eq!(
            cd("attachment; filename=\"fallback.txt\"; filename*=UTF-8''na%C3%AFve%20file.txt")
                .as_deref(),
            Some("naïve file.txt")
        );
        assert_eq!(cd("inline").as_deref(), None);
        assert_eq!(cd("attachment; filename*=koi8-r''%E1").as_deref(), None);
    }

    #[test]
    fn chooses_from_header_then_url_then_default() {
        let url = Url::parse("http://h/dir/file%20name.zip?x=1").unwrap();
        assert_eq!(choose(None, &url), "file name.zip");
        assert_eq!(
            choose(Some("attachment; filename=\"..\""), &url),
            "file name.zip"
        );
        assert_eq!(choose(Some("attachment; filename=a.txt"), &url), "a.txt");
        let bare = Url::parse("http://h/").unwrap();
        assert_eq!(choose(None, &bare), "download");
    }

    #[test]
    fn numbered_names() {
        assert_eq!(numbered("a.tar.gz", 1), "a.tar (1).gz");
        assert_eq!(numbered("README", 2), "README (2)");
        assert_eq!(numbered(".hidden", 1), ".hidden (1)");
    }
}
