//! Passwords written into URLs (`https://user:pass@host/f`): hidden when a URL is shown to
//! people, left out of what a client may store anywhere (resume data) — SPEC §14.

use std::borrow::Cow;

/// `text` with the password of every URL in it replaced by `***`: for output meant for
/// people (`ferry ls`, result lines, error messages naming a URL).
pub fn hide_url_passwords(text: &str) -> Cow<'_, str> {
    edit_passwords(text, Some("***"))
}

/// `url` without the password in its user info (`https://user@host/f`).
pub fn without_url_password(url: &str) -> Cow<'_, str> {
    edit_passwords(url, None)
}

/// Replaces (or, with `None`, removes along with its `:`) the password of every
/// `scheme://user:password@host` in `text`.
fn edit_passwords<'a>(text: &'a str, replacement: Option<&str>) -> Cow<'a, str> {
    let mut out = String::new();
    let mut copied = 0;
    let mut from = 0;
    while let Some(found) = text[from..].find("://") {
        let start = from + found + 3;
        let rest = &text[start..];
        let end = rest
            .find(|c: char| {
                matches!(c, '/' | '?' | '#' | '"' | '\'' | '<' | '>') || c.is_whitespace()
            })
            .unwrap_or(rest.len());
        let authority = &rest[..end];
        if let Some(at) = authority.rfind('@')
            && let Some(colon) = authority[..at].find(':')
            && colon + 1 < at
        {
            let (cut, keep) = match replacement {
                Some(_) => (start + colon + 1, start + at),
                None => (start + colon, start + at),
            };
            out.push_str(&text[copied..cut]);
            out.push_str(replacement.unwrap_or(""));
            copied = keep;
        }
        from = start + end;
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hides_passwords_of_every_url_in_a_text() {
        assert_eq!(
            hide_url_passwords("https://ann:s3cret@example.com/f?x=1"),
            "https://ann:***@example.com/f?x=1"
        );
        assert_eq!(
            hide_url_passwords("redirect from http://a:b@h1/x to http://c:d:e@h2:8080 failed"),
            "redirect from http://a:***@h1/x to http://c:***@h2:8080 failed"
        );
        // The last `@` ends the user info: a password may contain `@`.
        assert_eq!(hide_url_passwords("http://u:p@ss@h/"), "http://u:***@h/");
    }

    #[test]
    fn leaves_urls_without_a_password_alone() {
        for text in [
            "https://example.com/a:b@c",
            "http://user@h/",
            "http://user:@h/",
            "http://h:8080/x",
            "no url here: a@b",
        ] {
            assert!(
                matches!(hide_url_passwords(text), Cow::Borrowed(_)),
                "{text}"
            );
        }
    }

    #[test]
    fn strips_a_password_with_its_colon() {
        assert_eq!(
            without_url_password("https://ann:s3cret@example.com/f"),
            "https://ann@example.com/f"
        );
        assert_eq!(
            without_url_password("https://example.com/f"),
            "https://example.com/f"
        );
    }
}
