//! Reading inside the few client messages the proxy must look into (Bind, Describe,
//! Close) without copying them: splitting their bodies into borrowed parts.

use super::split_cstr;

/// Bind body split into (portal, statement, rest), or None when malformed.
pub fn split_bind(body: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let (portal, rest) = split_cstr(body)?;
    let (statement, rest) = split_cstr(rest)?;
    Some((portal, statement, rest))
}

/// Describe/Close body split into (kind, name), or None when malformed.
pub fn split_target(body: &[u8]) -> Option<(u8, &[u8])> {
    let (&kind, rest) = body.split_first()?;
    let (name, _) = split_cstr(rest)?;
    Some((kind, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_bodies_are_rejected() {
        assert_eq!(
            split_bind(b"portal\0stmt\0rest"),
            Some((&b"portal"[..], &b"stmt"[..], &b"rest"[..]))
        );
        assert_eq!(split_bind(b"portal"), None);
        assert_eq!(split_target(b"Sname\0"), Some((b'S', &b"name"[..])));
        assert_eq!(split_target(b""), None);
        assert_eq!(split_target(b"Sname"), None);
    }
}
