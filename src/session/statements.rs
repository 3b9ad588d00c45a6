//! The prepared statements one client has defined, by the client's own names, with
//! what running each does to the session ([`StatementEffects`]); and, per attach,
//! which [`Action`] each of its portals would run. The statements themselves (and their names on
//! servers) are `server::statements`.

use std::collections::HashMap;
use std::sync::Arc;

use super::sql_scan::{Action, StatementEffects};
use crate::server::statements::StatementDef;

/// The statements one client has prepared, by the client's names.
#[derive(Default)]
pub struct ClientStatements {
    by_name: HashMap<Box<[u8]>, Arc<StatementDef>>,
    /// Effects of the statements that have any (most have none).
    effects: HashMap<Box<[u8]>, StatementEffects>,
}

impl ClientStatements {
    pub fn insert(&mut self, name: &[u8], def: Arc<StatementDef>, effects: StatementEffects) {
        self.by_name.insert(name.into(), def);
        if effects.is_none() {
            self.effects.remove(name);
        } else {
            self.effects.insert(name.into(), effects);
        }
    }
    pub fn get(&self, name: &[u8]) -> Option<&Arc<StatementDef>> {
        self.by_name.get(name)
    }
    pub fn effects(&self, name: &[u8]) -> StatementEffects {
        self.effects.get(name).cloned().unwrap_or_default()
    }
    pub fn remove(&mut self, name: &[u8]) -> Option<Arc<StatementDef>> {
        self.effects.remove(name);
        self.by_name.remove(name)
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
