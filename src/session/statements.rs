//! The prepared statements one client has defined, by the client's own names. The
//! statements themselves (and their names on servers) are `server::statements`.
//! Bounded: their names and texts may take [`MAX_STATEMENT_BYTES`] per client
//! (a single larger statement is still allowed, alone); a statement a server
//! rejected is forgotten at once.

use std::collections::HashMap;
use std::sync::Arc;

use crate::server::statements::StatementDef;

/// What one client's statements may take, names and texts together.
pub const MAX_STATEMENT_BYTES: usize = 16 << 20;

/// The statements one client has prepared, by the client's names.
#[derive(Default)]
pub struct ClientStatements {
    by_name: HashMap<Box<[u8]>, Arc<StatementDef>>,
    bytes: usize,
}

/// Defining one more statement would take the client past [`MAX_STATEMENT_BYTES`].
#[derive(Debug, PartialEq, Eq)]
pub struct OverLimit {
    pub bytes: usize,
}

fn size(name: &[u8], def: &StatementDef) -> usize {
    name.len() + def.body.len()
}

impl ClientStatements {
    pub fn insert(&mut self, name: &[u8], def: Arc<StatementDef>) -> Result<(), OverLimit> {
        let adding = size(name, &def);
        let replaced = self.by_name.get(name).map_or(0, |old| size(name, old));
        let after = self.bytes - replaced + adding;
        if after > MAX_STATEMENT_BYTES && self.bytes > replaced {
            return Err(OverLimit { bytes: after });
        }
        self.bytes = after;
        self.by_name.insert(name.into(), def);
        Ok(())
    }

    pub fn get(&self, name: &[u8]) -> Option<&Arc<StatementDef>> {
        self.by_name.get(name)
    }

    pub fn remove(&mut self, name: &[u8]) -> Option<Arc<StatementDef>> {
        let removed = self.by_name.remove(name)?;
        self.bytes -= size(name, &removed);
        Some(removed)
    }

    /// Forgets `def` under whatever name defined it (a server rejected its Parse,
    /// so a direct connection would not have it either); a name defined again
    /// since keeps its new statement.
    pub fn forget(&mut self, def: &Arc<StatementDef>) {
        let mut freed = 0;
        self.by_name.retain(|name, known| {
            let keep = !Arc::ptr_eq(known, def);
            if !keep {
                freed += size(name, known);
            }
            keep
        });
        self.bytes -= freed;
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(text_len: usize) -> Arc<StatementDef> {
        let mut body = b"s\0".to_vec();
        body.extend(std::iter::repeat_n(b'x', text_len));
        body.extend_from_slice(&[0, 0, 0]);
        Arc::new(StatementDef::from_parse_body(&body, 1))
    }

    #[test]
    fn bytes_are_bounded_but_one_large_statement_fits() {
        let mut statements = ClientStatements::default();
        let big = def(MAX_STATEMENT_BYTES + 10);
        statements.insert(b"big", Arc::clone(&big)).expect("alone");
        assert!(statements.insert(b"small", def(10)).is_err());
        statements
            .insert(b"big", def(10))
            .expect("replacing frees its bytes");
        statements.insert(b"small", def(10)).expect("room again");
        assert_eq!(statements.bytes(), 2 * (3 + 13) + 2);
    }

    #[test]
    fn a_rejected_statement_is_forgotten_unless_redefined() {
        let mut statements = ClientStatements::default();
        let rejected = def(5);
        statements
            .insert(b"a", Arc::clone(&rejected))
            .expect("fits");
        statements
            .insert(b"b", Arc::clone(&rejected))
            .expect("fits");
        let again = def(6);
        statements.insert(b"c", Arc::clone(&again)).expect("fits");
        statements.forget(&rejected);
        assert!(statements.get(b"a").is_none() && statements.get(b"b").is_none());
        assert!(statements.get(b"c").is_some());
        assert_eq!(statements.bytes(), 1 + again.body.len());
        statements.remove(b"c");
        assert_eq!(statements.bytes(), 0);
    }
}
