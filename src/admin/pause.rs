//! `POST /pause` and `POST /resume` for scripts: the console's PAUSE and RESUME
//! over HTTP. `?db=NAME` limits them to one database; `/pause` waits until every
//! running transaction has finished (up to `?timeout_ms=`, default 30000), answering
//! 200 once paused or 504 if transactions are still running (the pause stays).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};

use super::text;
use crate::context::ProxyContext;
use crate::control::{self, PauseScope};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The value of `name` in a query string, if present.
fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

pub(super) async fn pause(ctx: &ProxyContext, query: Option<&str>) -> Response<Full<Bytes>> {
    let scope = PauseScope::from_arg(query_param(query, "db"));
    let limit = match query_param(query, "timeout_ms").map(str::parse::<u64>) {
        None => DEFAULT_TIMEOUT,
        Some(Ok(ms)) => Duration::from_millis(ms),
        Some(Err(_)) => {
            return text(
                StatusCode::BAD_REQUEST,
                "timeout_ms must be a number of milliseconds\n".into(),
            )
        }
    };
    tracing::info!(?scope, "pause requested over the admin API");
    if control::pause_and_wait(ctx.pause_gate(), ctx.client_registry(), &scope, Some(limit)).await {
        text(StatusCode::OK, format!("paused: {}\n", describe(&scope)))
    } else {
        let busy = ctx.client_registry().busy_in(&scope);
        text(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "pausing {}: {busy} transactions still running after {limit:?}; new ones are held\n",
                describe(&scope)
            ),
        )
    }
}

pub(super) fn resume(ctx: &ProxyContext, query: Option<&str>) -> Response<Full<Bytes>> {
    let scope = PauseScope::from_arg(query_param(query, "db"));
    match ctx.pause_gate().resume(&scope) {
        Ok(()) => {
            tracing::info!(?scope, "resumed over the admin API");
            text(StatusCode::OK, format!("resumed: {}\n", describe(&scope)))
        }
        Err(e) => text(StatusCode::CONFLICT, format!("cannot resume: {e}\n")),
    }
}

fn describe(scope: &PauseScope) -> String {
    match scope {
        PauseScope::All => "all databases".into(),
        PauseScope::Database(db) => format!("database {db}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_found_by_name() {
        assert_eq!(
            query_param(Some("db=appdb&timeout_ms=5"), "db"),
            Some("appdb")
        );
        assert_eq!(
            query_param(Some("db=appdb&timeout_ms=5"), "timeout_ms"),
            Some("5")
        );
        assert_eq!(query_param(None, "db"), None);
    }
}
