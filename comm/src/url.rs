//! Hiding secrets in broker URLs before they reach logs or error messages.
//!
//! The rule is textual and conservative, so it holds however malformed the URL is: the
//! user information runs from after the scheme (`amqp://`, `amqp:` or nothing) to the
//! last `@`; when it reads `user:password`, everything after the first `:` is the
//! password. Masking a little too much is harmless; leaking a password is not.

/// Replacement text for a hidden password.
pub const MASK: &str = "***";

/// Returns `url` with its password (if any) replaced by `***`.
///
/// Well-formed or not: `amqp://u:p@h`, `amqp:u:p@h`, `u:p@h`, passwords holding `@`, `:`,
/// `/` or percent escapes all come out as `...u:***@h...`.
pub fn mask_password(url: &str) -> String {
    match password_span(url) {
        Some((start, end)) => format!("{}{MASK}{}", &url[..start], &url[end..]),
        None => url.to_owned(),
    }
}

/// Masks every URL-like word of `text` (see [`mask_password`]): for messages that may
/// quote a URL from somewhere else, such as a parser's error.
pub fn mask_passwords_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(|c: char| !c.is_whitespace()) {
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let word = &rest[..end];
        if word.contains('@') && word.contains(':') {
            out.push_str(&mask_password(word));
        } else {
            out.push_str(word);
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Byte range of the password in `url`: after the first `:` of the user information,
/// up to its last `@`.
fn password_span(url: &str) -> Option<(usize, usize)> {
    let at = url.rfind('@')?;
    let before = &url[..at];
    let lead = before.len() - before.trim_start().len();
    let start = lead + userinfo_start(&before[lead..]);
    let colon = before[start..].find(':')? + start + 1;
    (colon <= at).then_some((colon, at))
}

/// Where the user information of `before` (a URL up to its last `@`) begins: after
/// `scheme://` or `scheme:` when what follows still holds a `:` (`amqp:user:pw`), else at
/// the start (`user:pw`, whose `user:` reads like a scheme).
fn userinfo_start(before: &str) -> usize {
    let scheme_len = before
        .char_indices()
        .take_while(|&(i, c)| {
            if i == 0 {
                c.is_ascii_alphabetic()
            } else {
                c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')
            }
        })
        .count();
    if scheme_len == 0 || before.as_bytes().get(scheme_len) != Some(&b':') {
        return 0;
    }
    let after_colon = scheme_len + 1;
    let slashes = before[after_colon..]
        .bytes()
        .take_while(|&b| b == b'/')
        .count();
    let start = after_colon + slashes;
    if slashes > 0 || before[start..].contains(':') {
        start
    } else {
        0
    }
}

/// Returns the password of `url` if it has one, raw and percent-decoded, for redacting
/// it from foreign error messages.
pub(crate) fn password_of(url: &str) -> Option<(String, String)> {
    let (start, end) = password_span(url)?;
    let raw = &url[start..end];
    (!raw.is_empty()).then(|| (raw.to_owned(), percent_decode(raw)))
}

/// Replaces every occurrence of the password of `url` in `text` by `***`, then masks
/// whatever else in `text` looks like a URL with a password.
pub fn redact(text: &str, url: &str) -> String {
    let mut out = text.to_owned();
    if let Some((raw, decoded)) = password_of(url) {
        out = out.replace(&raw, MASK);
        if !decoded.is_empty() {
            out = out.replace(&decoded, MASK);
        }
    }
    mask_passwords_in(&out)
}

fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_password_of_amqp_url() {
        let masked = mask_password("amqp://guest:s3cret@127.0.0.1:5672/%2f");
        assert_eq!(masked, "amqp://guest:***@127.0.0.1:5672/%2f");
    }

    #[test]
    fn masks_password_of_amqps_url_with_query() {
        let masked = mask_password("amqps://u:p%40ss@broker.example:5671/vh?heartbeat=10");
        assert!(!masked.contains("p%40ss"), "{masked}");
        assert_eq!(masked, "amqps://u:***@broker.example:5671/vh?heartbeat=10");
    }

    #[test]
    fn url_without_password_is_unchanged() {
        for url in [
            "amqp://127.0.0.1:5672/%2f",
            "amqp://guest@localhost/",
            "not a url",
        ] {
            assert_eq!(mask_password(url), url);
        }
    }

    #[test]
    fn unparsable_url_is_masked_textually() {
        let masked = mask_password("amqp://user:secret@[bad-host/vhost");
        assert!(!masked.contains("secret"), "{masked}");
        assert!(masked.starts_with("amqp://user:***@"), "{masked}");
    }

    #[test]
    fn malformed_urls_never_show_their_password() {
        for (url, masked) in [
            ("amqp:guest:s3cr3t@host:5673", "amqp:guest:***@host:5673"),
            ("amqp:/guest:s3cr3t@host", "amqp:/guest:***@host"),
            ("guest:s3cr3t@host:5673", "guest:***@host:5673"),
            ("amqp://guest:s3:cr3t@host/", "amqp://guest:***@host/"),
            ("amqp://guest:s3@cr@3t@host/", "amqp://guest:***@host/"),
            ("amqp://guest:s3/cr?3t#x@host/", "amqp://guest:***@host/"),
            ("amqp://guest:12#s3cr3t@host/", "amqp://guest:***@host/"),
            (
                "amqp://gu%3Aest:s3%40cr3t@host/",
                "amqp://gu%3Aest:***@host/",
            ),
            ("  amqp://guest:s3cr3t@host ", "  amqp://guest:***@host "),
            (
                "amqps://guest:s3cr3t@[::1]:5671/%2f",
                "amqps://guest:***@[::1]:5671/%2f",
            ),
        ] {
            assert_eq!(mask_password(url), masked, "{url}");
        }
    }

    #[test]
    fn urls_quoted_in_text_are_masked() {
        let text = "invalid AMQP URL 'amqp:guest:s3cr3t@host:5673': bad port\n(\"u:pw@h\")";
        let masked = mask_passwords_in(text);
        assert!(
            !masked.contains("s3cr3t") && !masked.contains("pw@"),
            "{masked}"
        );
        assert!(masked.starts_with("invalid AMQP URL '"), "{masked}");
        assert_eq!(
            mask_passwords_in("no secrets: 12:30 a@b"),
            "no secrets: 12:30 a@b"
        );
    }

    #[test]
    fn redact_covers_malformed_urls() {
        let url = "amqp:guest:s3cr3t@host:5673";
        let text = "connection refused for guest with s3cr3t";
        assert_eq!(redact(text, url), "connection refused for guest with ***");
    }

    #[test]
    fn redact_removes_decoded_and_raw_password() {
        let url = "amqp://u:p%40ss@host/";
        let text = "failed for p@ss and p%40ss";
        assert_eq!(redact(text, url), "failed for *** and ***");
    }
}
