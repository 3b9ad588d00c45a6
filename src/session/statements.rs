//! The prepared statements one client has defined, by the client's own names, with
//! what running each does to the session ([`StatementEffects`]); and, per attach,
//! which [`Action`] each of its portals would run. The statements themselves (and
//! their names on servers) are `server::statements`. Bounded: their names and texts
//! may take [`MAX_STATEMENT_BYTES`] per client (a single larger statement is still
//! allowed, alone); a statement a server rejected is forgotten at once.

use std::collections::HashMap;
use std::sync::Arc;

use super::sql_scan::{Action, StatementEffects};
use crate::server::statements::StatementDef;

/// What one client's statements may take, names and texts together.
pub const MAX_STATEMENT_BYTES: usize = 16 << 20;

/// The statements one client has prepared, by the client's names.
#[derive(Default)]
pub struct ClientStatements {
    by_name: HashMap<Box<[u8]>, Arc<StatementDef>>,
    /// Effects of the statements that have any (most have none).
    effects: HashMap<Box<[u8]>, StatementEffects>,
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
    pub fn insert(
        &mut self,
        name: &[u8],
        def: Arc<StatementDef>,
        effects: StatementEffects,
    ) -> Result<(), OverLimit> {
        let adding = size(name, &def);
        let replaced = self.by_name.get(name).map_or(0, |old| size(name, old));
        let after = self.bytes - replaced + adding;
        if after > MAX_STATEMENT_BYTES && self.bytes > replaced {
            return Err(OverLimit { bytes: after });
        }
        self.bytes = after;
        self.by_name.insert(name.into(), def);
        if effects.is_none() {
            self.effects.remove(name);
        } else {
            self.effects.insert(name.into(), effects);
        }
        Ok(())
    }

    pub fn get(&self, name: &[u8]) -> Option<&Arc<StatementDef>> {
        self.by_name.get(name)
    }

    pub fn effects(&self, name: &[u8]) -> StatementEffects {
        self.effects.get(name).cloned().unwrap_or_default()
    }

    pub fn remove(&mut self, name: &[u8]) -> Option<Arc<StatementDef>> {
        self.effects.remove(name);
        let removed = self.by_name.remove(name)?;
        self.bytes -= size(name, &removed);
        Some(removed)
    }

    /// Forgets `def` under whatever name defined it (a server rejected its Parse,
    /// so a direct connection would not have it either); a name defined again
    /// since keeps its new statement.
    pub fn forget(&mut self, def: &Arc<StatementDef>) {
        let mut freed = 0;
        let mut names = Vec::new();
        self.by_name.retain(|name, known| {
            let keep = !Arc::ptr_eq(known, def);
            if !keep {
                freed += size(name, known);
                names.push(name.clone());
            }
            keep
        });
        for name in names {
            self.effects.remove(&name);
        }
        self.bytes -= freed;
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Portals live until their transaction ends, so within one attach: the effects of
/// the unnamed statement and the action of each bound portal that has one.
#[derive(Debug, Default)]
pub struct PortalActions {
    pub unnamed_statement: StatementEffects,
    portals: Vec<(Box<[u8]>, Action)>,
}

/// Portals with an action held at once; a client binding more of them to SET
/// statements in one transaction gets its server reset rather than followed.
const MAX_PORTALS: usize = 256;

impl PortalActions {
    /// Binds `portal`; false when it could not be remembered.
    pub fn bind(&mut self, portal: &[u8], action: Action) -> bool {
        self.close(portal);
        if action == Action::Other {
            return true;
        }
        if self.portals.len() >= MAX_PORTALS {
            return false;
        }
        self.portals.push((portal.into(), action));
        true
    }

    pub fn get(&self, portal: &[u8]) -> Action {
        self.portals
            .iter()
            .find(|(name, _)| **name == *portal)
            .map(|(_, action)| action.clone())
            .unwrap_or_default()
    }

    pub fn close(&mut self, portal: &[u8]) {
        self.portals.retain(|(name, _)| **name != *portal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> StatementEffects {
        StatementEffects::default()
    }

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
        statements
            .insert(b"big", Arc::clone(&big), none())
            .expect("alone");
        assert!(statements.insert(b"small", def(10), none()).is_err());
        statements
            .insert(b"big", def(10), none())
            .expect("replacing frees its bytes");
        statements
            .insert(b"small", def(10), none())
            .expect("room again");
        assert_eq!(statements.bytes(), 2 * (3 + 13) + 2);
    }

    #[test]
    fn a_rejected_statement_is_forgotten_unless_redefined() {
        let mut statements = ClientStatements::default();
        let rejected = def(5);
        statements
            .insert(b"a", Arc::clone(&rejected), none())
            .expect("fits");
        statements
            .insert(b"b", Arc::clone(&rejected), none())
            .expect("fits");
        let again = def(6);
        statements
            .insert(b"c", Arc::clone(&again), none())
            .expect("fits");
        statements.forget(&rejected);
        assert!(statements.get(b"a").is_none() && statements.get(b"b").is_none());
        assert!(statements.get(b"c").is_some());
        assert_eq!(statements.bytes(), 1 + again.body.len());
        statements.remove(b"c");
        assert_eq!(statements.bytes(), 0);
    }
}
