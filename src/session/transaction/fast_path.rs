//! Requests answered without a server: a leading Parse/Close/Sync batch from an
//! idle client, when every Parse is of a statement a server of this pool has
//! prepared before. Only the client's statement names change. This spares a
//! checkout, and keeps clients that prepare synchronously while others hold every
//! server (pgbench `-M prepared` with fewer servers than clients) from waiting on
//! each other.

use std::sync::Arc;

use bytes::BytesMut;

use super::super::sql_scan;
use super::super::Session;
use crate::protocol::frame::Messages;
use crate::protocol::{frontend, messages, split_cstr, tag};
use crate::server::statements::StatementDef;
use crate::session::statements::MAX_STATEMENT_BYTES;

/// The replies to the answerable batch at the front of `inbox` (which it takes
/// off), or None when it must go to a server.
pub(super) fn answer_without_server(
    session: &mut Session,
    inbox: &mut BytesMut,
) -> Option<BytesMut> {
    // Most requests (a Query, a Bind) cannot be: spare them the pool's shared
    // reference count.
    if !matches!(inbox.first(), Some(&(tag::PARSE | tag::CLOSE | tag::SYNC))) {
        return None;
    }
    let pool = Arc::clone(session.servers.bound_pool()?);
    let max_message = session.env.config.client.max_message_size.0 as usize;
    let mut batch = Messages::new(inbox, max_message);
    loop {
        let message = batch.next()?;
        let answerable = match message.tag {
            tag::PARSE => match split_cstr(message.body) {
                Some((name, rest)) if !name.is_empty() => {
                    // Near the client's statement bound, the translator decides.
                    let fits =
                        session.statements.bytes() + message.body.len() <= MAX_STATEMENT_BYTES;
                    // A refused statement is prepared under its refusal's text.
                    fits && sql_scan::scan(query_text(rest)).refusal.is_none()
                        && pool.knows_statement(&StatementDef::from_parse_body(
                            message.body,
                            name.len(),
                        ))
                }
                _ => false,
            },
            tag::CLOSE => matches!(
                frontend::split_target(message.body),
                Some((tag::TARGET_STATEMENT, name)) if !name.is_empty()
            ),
            tag::SYNC => true,
            _ => false,
        };
        if !answerable {
            return None;
        }
        if message.tag == tag::SYNC {
            break;
        }
    }
    let end = batch.consumed();
    let batch = inbox.split_to(end);
    let mut replies = BytesMut::new();
    for message in Messages::new(&batch, usize::MAX) {
        match message.tag {
            tag::PARSE => {
                if let Some((name, rest)) = split_cstr(message.body) {
                    let def = Arc::new(StatementDef::from_parse_body(message.body, name.len()));
                    let effects = sql_scan::scan(query_text(rest)).statement_effects();
                    // Checked to fit above.
                    let _ = session.statements.insert(name, def, effects);
                }
                replies.extend_from_slice(messages::PARSE_COMPLETE);
            }
            tag::CLOSE => {
                if let Some((_, name)) = frontend::split_target(message.body) {
                    session.statements.remove(name);
                }
                replies.extend_from_slice(messages::CLOSE_COMPLETE);
            }
            _ => messages::ready_for_query_idle(&mut replies),
        }
    }
    Some(replies)
}

/// The query of a Parse body after the statement name.
fn query_text(rest: &[u8]) -> &[u8] {
    split_cstr(rest).map(|(query, _)| query).unwrap_or(rest)
}
