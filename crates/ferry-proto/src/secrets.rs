//! Passwords written into URLs (`https://user:pass@host/f`): hidden when a URL is shown to
//! people, left out of what a client may store anywhere (resume data) — SPEC §14.

use std::borrow::Cow;

use url::Url;

/// `url` with its password replaced by `***`, and those of any URL inside it (a query
/// parameter): for showing one URL to people (`ferry ls`).
pub fn hide_url_password(url: &str) -> Cow<'_, str> {
    match edit_password(url, Some("***")) {
        Cow::Borrowed(url) => hide_url_passwords(url),
        Cow::Owned(url) => Cow::Owned(hide_url_passwords(&url).into_owned()),
    }
}

/// `url` without the password in its user info (`https://user@host/f`): for what a client
/// may store anywhere.
pub fn without_url_password(url: &str) -> Cow<'_, str> {
    edit_password(url, None)
}

/// `text` with the password of every `scheme://user:password@host` in it replaced by `***`:
/// for output meant for people that may quote URLs (error messages).
pub fn hide_url_passwords(text: &str) -> Cow<'_, str> {
    let mut out = String::new();
    let mut copied = 0;
    let mut from = 0;
    while let Some(found) = text[from..].find("://") {
        let start = from + found + 3;
        let rest = &text[start..];
        // Where the authority ends; a quote is not an end (`'` may be in a password).
        let end = rest
            .find(|c: char| matches!(c, '/' | '?' | '#' | '\\') || c.is_whitespace())
            .unwrap_or(rest.len());
        let authority = &rest[..end];
        if let Some(at) = authority.rfind('@')
            && let Some(colon) = authority[..at].find(':')
            && colon + 1 < at
        {
            out.push_str(&text[copied..start + colon + 1]);
            out.push_str("***");
            copied = start + at;
        }
        from = start + end;
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// One URL with its password replaced (or removed), as the URL parser reads it — so every
/// form it accepts is covered (`http:user:pw@h`, backslashes…); text it cannot parse is
/// scanned as [`hide_url_passwords`] does, and the password removed from it is `***` then.
fn edit_password<'a>(url: &'a str, replacement: Option<&str>) -> Cow<'a, str> {
    match Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some_and(|p| !p.is_empty()) => {
            // Only fails for URLs that cannot have a user info, which this one has.
            let _ = parsed.set_password(replacement);
            Cow::Owned(parsed.into())
        }
        Ok(_) => Cow::Borrowed(url),
        Err(_) => hide_url_passwords(url),
    }
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
        // The last `@` ends the user info: a password may contain `@`, and quotes.
        assert_eq!(hide_url_passwords("http://u:p@ss@h/"), "http://u:***@h/");
        assert_eq!(
            hide_url_passwords("\"http://ann:it's@h/f\""),
            "\"http://ann:***@h/f\""
        );
    }

    #[test]
    fn leaves_urls_without_a_password_alone() {
        for text in [
            "https://example.com/a:b@c",
            "http://user@h/",
            "http://user:@h/",
            "http://h:8080/x",
            "http://[::1]:8080/x",
            "no url here: a@b",
        ] {
            assert!(
                matches!(hide_url_passwords(text), Cow::Borrowed(_)),
                "{text}"
            );
            assert!(
                matches!(hide_url_password(text), Cow::Borrowed(_)),
                "{text}"
            );
            assert!(
                matches!(without_url_password(text), Cow::Borrowed(_)),
                "{text}"
            );
        }
    }

    #[test]
    fn one_url_loses_its_password_in_every_form_the_parser_accepts() {
        assert_eq!(
            without_url_password("https://ann:s3cret@example.com/f"),
            "https://ann@example.com/f"
        );
        assert_eq!(
            hide_url_password("https://ann:it's@example.com/f"),
            "https://ann:***@example.com/f"
        );
        assert_eq!(
            hide_url_password("https://proxy/get?u=https://ann:pw@h/f"),
            "https://proxy/get?u=https://ann:***@h/f"
        );
        for odd in [
            "http:ann:pw@h/f",
            "http:\\\\ann:pw@h\\f",
            "HTTP://ann:pw@h/f",
        ] {
            let hidden = hide_url_password(odd);
            assert!(!hidden.contains("pw"), "{odd} → {hidden}");
            let stripped = without_url_password(odd);
            assert!(!stripped.contains("pw"), "{odd} → {stripped}");
            assert!(stripped.contains("ann@h"), "{odd} → {stripped}");
        }
        assert_eq!(
            without_url_password("https://example.com/f"),
            "https://example.com/f"
        );
    }
}
