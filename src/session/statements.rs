//! The prepared statements one client has defined, by the client's own names. The
//! statements themselves (and their names on servers) are `server::statements`.

use std::collections::HashMap;
use std::sync::Arc;

use crate::server::statements::StatementDef;

/// The statements one client has prepared, by the client's names.
#[derive(Default)]
pub struct ClientStatements {
    by_name: HashMap<Box<[u8]>, Arc<StatementDef>>,
}

impl ClientStatements {
    pub fn insert(&mut self, name: &[u8], def: Arc<StatementDef>) {
        self.by_name.insert(name.into(), def);
    }
    pub fn get(&self, name: &[u8]) -> Option<&Arc<StatementDef>> {
        self.by_name.get(name)
    }
    pub fn remove(&mut self, name: &[u8]) -> Option<Arc<StatementDef>> {
        self.by_name.remove(name)
    }
}
