//! Which entry a logging-in client is checked against: a configured user's, else
//! (with `auth:`) the one `auth_query` finds on the cluster, else none (the mock
//! exchange, then 28P01). A failed login against a found entry asks the cluster
//! again, so a changed password takes effect for the next login. When the lookup
//! cannot reach any node and nothing is cached the client is told so (08006).

use bytes::BytesMut;

use crate::auth_query::Lookup;
use crate::config::ClientAuthMethod;
use crate::context::ProxyContext;
use crate::protocol::startup::StartupReader;
use crate::protocol::{ClientError, SqlState};
use crate::tls::ClientStream;

use super::client_auth::{self, TlsFacts};
use super::handshake::HandshakeFailure;

/// Finds `user`'s entry and runs [`client_auth::authenticate`] against it.
pub(super) async fn authenticate(
    socket: &mut ClientStream,
    reader: &mut StartupReader,
    ctx: &ProxyContext,
    user: &str,
    rule_method: Option<ClientAuthMethod>,
    tls: TlsFacts<'_>,
    out: &mut BytesMut,
) -> Result<(), HandshakeFailure> {
    let users = ctx.users();
    // Configured users win over auth_query.
    let lookup = match (users.get(user), ctx.auth_query()) {
        (Some(entry), _) => {
            return client_auth::authenticate(
                socket,
                reader,
                Some(entry),
                user,
                rule_method,
                tls,
                out,
            )
            .await
            .map(|_| ());
        }
        (None, None) => {
            return client_auth::authenticate(socket, reader, None, user, rule_method, tls, out)
                .await
                .map(|_| ());
        }
        (None, Some(lookup)) => lookup,
    };
    let config = ctx.config();
    let topology = ctx.topology().load();
    let entry = match lookup.lookup(user, &config.server, &topology).await {
        Lookup::Found(entry) => entry,
        Lookup::NotFound => {
            return client_auth::authenticate(socket, reader, None, user, rule_method, tls, out)
                .await
                .map(|_| ());
        }
        Lookup::Unavailable(reason) => {
            return Err(HandshakeFailure::Refuse(
                ClientError::fatal(
                    SqlState::ConnectionFailure,
                    format!(
                        "cannot look up user \"{}\": auth.query got no answer",
                        crate::log_text::Escaped(user)
                    ),
                )
                .with_detail(reason),
            ))
        }
    };
    let result =
        client_auth::authenticate(socket, reader, Some(&entry), user, rule_method, tls, out).await;
    if matches!(&result, Err(HandshakeFailure::Refuse(e)) if e.code == SqlState::InvalidPassword) {
        lookup.login_failed(user, &config.server, &topology).await;
    }
    result.map(|_| ())
}
