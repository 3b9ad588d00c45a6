//! Addresses in the config: a Patroni REST API endpoint (`api:` URLs) and
//! `host:port` strings, IPv6 literals bracketed.

/// A Patroni REST API endpoint parsed from a node's `api` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiEndpoint {
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash ("" for the root).
    pub base_path: String,
    /// `https://`: TLS with `cluster.api_tls`.
    pub https: bool,
}

impl ApiEndpoint {
    pub fn parse(url: &str) -> Result<ApiEndpoint, String> {
        let (rest, https) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
            (Some(rest), _) => (rest, false),
            (None, Some(rest)) => (rest, true),
            (None, None) => return Err(format!("{url:?} is not an http:// or https:// URL")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let (host, port) = split_host_port(authority)
            .ok_or_else(|| format!("{url:?} needs a host and port, like http://10.0.0.3:8008"))?;
        Ok(ApiEndpoint {
            host,
            port,
            base_path: path.trim_end_matches('/').to_string(),
            https,
        })
    }

    /// `host:port` for connecting and for the Host header.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub fn path(&self, path: &str) -> String {
        format!("{}{}", self.base_path, path)
    }
}

pub(crate) fn split_host_port(authority: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']')?;
        let port = rest[end + 1..].strip_prefix(':')?;
        (&rest[..end], port)
    } else {
        authority.rsplit_once(':')?
    };
    if host.is_empty() {
        return None;
    }
    let port: u16 = port.parse().ok()?;
    (port != 0).then(|| (host.to_string(), port))
}

/// The host part of `host:port` (brackets of an IPv6 literal removed).
pub fn split_host(address: &str) -> Option<&str> {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split_once(']').map(|(host, _)| host);
    }
    address.rsplit_once(':').map(|(host, _)| host)
}

/// `host:port`, with IPv6 literals bracketed.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_urls_parse() {
        let e = ApiEndpoint::parse("http://[::1]:8008/patroni/").expect("ipv6");
        assert_eq!((e.host.as_str(), e.port), ("::1", 8008));
        assert_eq!(e.path("/primary"), "/patroni/primary");
        assert_eq!(e.authority(), "[::1]:8008");
        assert!(ApiEndpoint::parse("http://:8008").is_err());
        assert!(ApiEndpoint::parse("ftp://x:1").is_err());
    }
}
