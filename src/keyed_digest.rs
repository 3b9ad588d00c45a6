//! A 128-bit digest of a value under keys drawn at random once per process.
//!
//! Sessions compare these instead of string lists on every checkout (server
//! ParameterStatus sets, session parameter sets). Because the keys are secret and
//! per process, a client cannot choose values (application_name, SET) that
//! collide, and at 2^-128 a collision is not met by chance either.

use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::OnceLock;

pub fn keyed_digest<T: Hash + ?Sized>(value: &T) -> u128 {
    static KEYS: OnceLock<(RandomState, RandomState)> = OnceLock::new();
    let (low, high) = KEYS.get_or_init(|| (RandomState::new(), RandomState::new()));
    (u128::from(high.hash_one(value)) << 64) | u128::from(low.hash_one(value))
}
