//! Protocol-level prepared statements on one server connection. A statement a
//! client defined with Parse is prepared on whichever server it gets, under a name
//! derived from the statement's text and parameter types (`sy_<keyed digest>`, see
//! [`StatementDef::from_parse_body`]), so clients
//! that prepare the same statement share it on a server. Each server connection
//! keeps an LRU set of what it has prepared. Which names a client uses for them is
//! the session's business (`session::statements`).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::keyed_digest::keyed_digest;
use crate::protocol::messages;

/// One statement as a client defined it with Parse.
#[derive(Debug, PartialEq, Eq)]
pub struct StatementDef {
    /// The name used on servers.
    pub server_name: String,
    /// The Parse body after the statement name: query, NUL, parameter types.
    pub body: Bytes,
}

impl StatementDef {
    /// From a Parse body whose name part is `name_len + 1` bytes long. The server
    /// name is a digest of the body under this process's secret keys: the same for
    /// every client of this process (so they share it), and not one a client can
    /// compute to replace with its own SQL (the session also refuses SQL-level
    /// PREPARE/EXECUTE/DEALLOCATE of `sy_` names).
    pub fn from_parse_body(parse_body: &[u8], name_len: usize) -> StatementDef {
        let body = Bytes::copy_from_slice(parse_body.get(name_len + 1..).unwrap_or_default());
        StatementDef {
            server_name: format!("sy_{:032x}", keyed_digest(&body[..])),
            body,
        }
    }

    /// A Parse message preparing this statement under its server name.
    pub fn put_parse(&self, out: &mut BytesMut) {
        messages::parse(out, self.server_name.as_bytes(), &self.body);
    }
}

/// Statements prepared on one server connection, least recently used first out.
#[derive(Debug, Default)]
pub struct ServerStatements {
    entries: HashMap<String, (Arc<StatementDef>, u64)>,
    tick: u64,
}

impl ServerStatements {
    /// Whether the server has this statement (same name and same text); marks it used.
    pub fn touch(&mut self, def: &StatementDef) -> bool {
        self.tick += 1;
        match self.entries.get_mut(&def.server_name) {
            Some((known, used)) if known.body == def.body => {
                *used = self.tick;
                true
            }
            _ => false,
        }
    }

    pub fn insert(&mut self, def: Arc<StatementDef>) {
        self.tick += 1;
        self.entries
            .insert(def.server_name.clone(), (def, self.tick));
    }

    pub fn remove(&mut self, server_name: &str) {
        self.entries.remove(server_name);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The tick of the last change, so callers can protect what they just used.
    pub fn tick(&self) -> u64 {
        self.tick
    }

    /// Removes and returns the least recently used statement if there are more than
    /// `max`, never one used after `protect_from` (still needed by the current batch).
    pub fn evict_over(&mut self, max: usize, protect_from: u64) -> Option<Arc<StatementDef>> {
        if self.entries.len() <= max {
            return None;
        }
        let (name, _) = self
            .entries
            .iter()
            .filter(|(_, (_, used))| *used < protect_from)
            .min_by_key(|(_, (_, used))| *used)
            .map(|(name, entry)| (name.clone(), entry.1))?;
        self.entries.remove(&name).map(|(def, _)| def)
    }

    /// Forgets everything (after DISCARD ALL or DEALLOCATE ALL on the server).
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_body(name: &str, query: &str) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        body.extend_from_slice(query.as_bytes());
        body.push(0);
        body.extend_from_slice(&0u16.to_be_bytes());
        body
    }

    #[test]
    fn same_text_same_server_name_whatever_the_client_name() {
        let a = StatementDef::from_parse_body(&parse_body("s1", "select 1"), 2);
        let b = StatementDef::from_parse_body(&parse_body("other", "select 1"), 5);
        let c = StatementDef::from_parse_body(&parse_body("s1", "select 2"), 2);
        assert_eq!(a.server_name, b.server_name);
        assert_ne!(a.server_name, c.server_name);
        let mut out = BytesMut::new();
        a.put_parse(&mut out);
        assert_eq!(out[0], crate::protocol::tag::PARSE);
        assert_eq!(
            u32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize,
            out.len() - 1
        );
        assert!(out.ends_with(&parse_body(&a.server_name, "select 1")));
    }

    #[test]
    fn lru_evicts_the_oldest_unprotected() {
        let defs: Vec<Arc<StatementDef>> = (0..4)
            .map(|i| {
                Arc::new(StatementDef::from_parse_body(
                    &parse_body("s", &format!("select {i}")),
                    1,
                ))
            })
            .collect();
        let mut server = ServerStatements::default();
        for def in &defs[..3] {
            server.insert(Arc::clone(def));
        }
        assert!(server.touch(&defs[0]));
        let protect = server.tick();
        server.insert(Arc::clone(&defs[3]));
        let evicted = server.evict_over(3, protect).expect("over capacity");
        assert_eq!(
            evicted.server_name, defs[1].server_name,
            "oldest unprotected"
        );
        assert_eq!(server.evict_over(3, protect), None);
        assert!(!server.touch(&defs[1]));
        assert!(server.touch(&defs[3]));
    }
}
