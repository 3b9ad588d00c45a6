//! Who may use the admin API, checked before any endpoint runs: with `admin.token`
//! set, every endpoint but `/health` needs `Authorization: Bearer <token>` (compared
//! in constant time); a POST needs `Content-Type: application/json` or the token, so
//! a web page in an operator's browser cannot send one across origins (a JSON
//! content type, like an Authorization header, makes the browser ask first with a
//! CORS preflight, which this API never grants). The peer-address rules for POSTs
//! stay in the endpoints ([`super::control_allowed`]).

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::text;
use crate::config::Secret;

/// The endpoint every load balancer and Keepalived script polls, open to all.
const OPEN_PATH: &str = "/health";

/// `None` when `request` may go on to its endpoint; otherwise the refusal to send.
pub(super) fn refusal<B>(
    request: &Request<B>,
    token: Option<&Secret>,
) -> Option<Response<Full<Bytes>>> {
    if request.uri().path() == OPEN_PATH {
        return None;
    }
    match token {
        Some(token) => (!bearer_matches(request, token)).then(unauthorized),
        None if request.method() == Method::POST && !is_json(request) => Some(text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a POST needs Content-Type: application/json (or admin.token), so that a web \
             page cannot send it from another origin\n"
                .into(),
        )),
        None => None,
    }
}

fn bearer_matches<B>(request: &Request<B>, token: &Secret) -> bool {
    let Some(given) = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, value)| value.trim())
    else {
        return false;
    };
    // Digests of both, so neither the comparison's time nor its length check
    // tells anything about the token.
    let given = Sha256::digest(given.as_bytes());
    let expected = Sha256::digest(token.expose().as_bytes());
    bool::from(given.ct_eq(&expected))
}

fn is_json<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

fn unauthorized() -> Response<Full<Bytes>> {
    let mut response = text(
        StatusCode::UNAUTHORIZED,
        "this endpoint needs Authorization: Bearer <admin.token>\n".into(),
    );
    response.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"switchyard\""),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, path: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("request")
    }

    fn status(refused: Option<Response<Full<Bytes>>>) -> u16 {
        refused.map_or(200, |response| response.status().as_u16())
    }

    #[test]
    fn with_a_token_everything_but_health_needs_it() {
        let token = Secret::new("0123456789abcdef-token");
        let t = Some(&token);
        assert_eq!(
            status(refusal(&request(Method::GET, "/health", &[]), t)),
            200
        );
        assert_eq!(
            status(refusal(&request(Method::GET, "/status", &[]), t)),
            401
        );
        let wrong = [("authorization", "Bearer 0123456789abcdef-tokeX")];
        assert_eq!(
            status(refusal(&request(Method::GET, "/metrics", &wrong), t)),
            401
        );
        let right = [("authorization", "bearer 0123456789abcdef-token")];
        assert_eq!(
            status(refusal(&request(Method::GET, "/metrics", &right), t)),
            200
        );
        // The token stands in for the JSON content type.
        assert_eq!(
            status(refusal(&request(Method::POST, "/reload", &right), t)),
            200
        );
        let basic = [("authorization", "Basic 0123456789abcdef-token")];
        assert_eq!(
            status(refusal(&request(Method::GET, "/status", &basic), t)),
            401
        );
    }

    #[test]
    fn without_a_token_a_post_needs_a_json_content_type() {
        assert_eq!(
            status(refusal(&request(Method::POST, "/reload", &[]), None)),
            415
        );
        let form = [("content-type", "application/x-www-form-urlencoded")];
        assert_eq!(
            status(refusal(&request(Method::POST, "/pause", &form), None)),
            415
        );
        let json = [("content-type", "application/json; charset=utf-8")];
        assert_eq!(
            status(refusal(&request(Method::POST, "/reload", &json), None)),
            200
        );
        assert_eq!(
            status(refusal(&request(Method::GET, "/status", &[]), None)),
            200
        );
    }
}
