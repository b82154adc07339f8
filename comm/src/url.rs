//! Hiding secrets in broker URLs before they reach logs or error messages.

/// Replacement text for a hidden password.
pub const MASK: &str = "***";

/// Returns `url` with its password (if any) replaced by `***`.
///
/// Works on well-formed URLs through the `url` crate and falls back to a
/// textual scan (`scheme://user:password@host`) for strings it cannot parse,
/// so a malformed URL never leaks its password either.
pub fn mask_password(url: &str) -> String {
    if let Ok(mut parsed) = url::Url::parse(url) {
        if parsed.password().is_some() {
            // Only fails for URLs that cannot have a password, which is not the case here.
            if parsed.set_password(Some(MASK)).is_ok() {
                return parsed.to_string();
            }
        } else {
            return url.to_owned();
        }
    }
    mask_textually(url)
}

/// Returns the password of `url` if it has one (percent-decoded), for redacting
/// it from foreign error messages.
pub(crate) fn password_of(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    let raw = parsed.password()?;
    let decoded = percent_decode(raw);
    Some(decoded)
}

/// Replaces every occurrence of the password of `url` in `text` by `***`.
pub(crate) fn redact(text: &str, url: &str) -> String {
    let mut out = text.to_owned();
    if let Some(password) = password_of(url).filter(|p| !p.is_empty()) {
        out = out.replace(&password, MASK);
    }
    if let Some(raw) = url::Url::parse(url)
        .ok()
        .and_then(|u| u.password().map(str::to_owned))
        .filter(|p| !p.is_empty())
    {
        out = out.replace(&raw, MASK);
    }
    out
}

fn mask_textually(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let authority_start = scheme_end + 3;
    let rest = &url[authority_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    let Some(colon) = userinfo.find(':') else {
        return url.to_owned();
    };
    format!(
        "{}{}:{}{}",
        &url[..authority_start],
        &userinfo[..colon],
        MASK,
        &url[authority_start + at..]
    )
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
    fn redact_removes_decoded_and_raw_password() {
        let url = "amqp://u:p%40ss@host/";
        let text = "failed for p@ss and p%40ss";
        assert_eq!(redact(text, url), "failed for *** and ***");
    }
}
