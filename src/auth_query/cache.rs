//! What `auth.query` answered, per user name, and when: a found user's entry is
//! fresh for `cache_ttl`, "no such user" for `negative_cache_ttl`. A found entry
//! outlives its ttl as the stale fallback for when no node answers; "no such
//! user" replaces it (a dropped role stops working). Pure: every call takes the
//! time, so tests drive it with their own clock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::users::UserEntry;

/// More names than this are not remembered as unknown (after expired ones were
/// dropped), so a flood of random names cannot grow the cache without bound;
/// found users are bounded by the roles that exist.
const MAX_ENTRIES: usize = 50_000;
// (Names are at most 63 bytes: `super::MAX_ROLE_NAME`.)

/// What the cache knows about a name now.
#[derive(Clone)]
pub enum Cached {
    /// Answered within its ttl: the entry, or None for "no such user".
    Fresh(Option<Arc<UserEntry>>),
    /// Answered too long ago ([`Cache::last_found`] has the stale entry, if any).
    Expired,
    /// Never asked (or forgotten).
    Absent,
}

struct Slot {
    answered_at: Instant,
    found: Option<Arc<UserEntry>>,
    /// The last refetch a failed login caused (rate-limited per user).
    refetched_after_failure: Option<Instant>,
}

pub struct Cache {
    slots: HashMap<String, Slot>,
    ttl: Duration,
    negative_ttl: Duration,
    refetch_interval: Duration,
}

impl Cache {
    pub fn new(ttl: Duration, negative_ttl: Duration, refetch_interval: Duration) -> Cache {
        Cache {
            slots: HashMap::new(),
            ttl,
            negative_ttl,
            refetch_interval,
        }
    }

    pub fn look(&self, user: &str, now: Instant) -> Cached {
        let Some(slot) = self.slots.get(user) else {
            return Cached::Absent;
        };
        let ttl = match slot.found {
            Some(_) => self.ttl,
            None => self.negative_ttl,
        };
        if now.saturating_duration_since(slot.answered_at) < ttl {
            Cached::Fresh(slot.found.clone())
        } else {
            Cached::Expired
        }
    }

    /// The last found entry, fresh or not (what a client that logged in with it
    /// goes on using for its server logins).
    pub fn last_found(&self, user: &str) -> Option<Arc<UserEntry>> {
        self.slots.get(user).and_then(|slot| slot.found.clone())
    }

    /// Records that the query found `entry` for `user` at `now`.
    pub fn found(&mut self, user: &str, entry: Arc<UserEntry>, now: Instant) {
        let slot = self.slots.entry(user.to_string()).or_insert(Slot {
            answered_at: now,
            found: None,
            refetched_after_failure: None,
        });
        slot.answered_at = now;
        slot.found = Some(entry);
    }

    /// Records that the query found no such user at `now`.
    pub fn not_found(&mut self, user: &str, now: Instant) {
        if let Some(slot) = self.slots.get_mut(user) {
            slot.answered_at = now;
            slot.found = None;
            return;
        }
        if self.slots.len() >= MAX_ENTRIES {
            self.forget_expired_unknowns(now);
            if self.slots.len() >= MAX_ENTRIES {
                return;
            }
        }
        self.slots.insert(
            user.to_string(),
            Slot {
                answered_at: now,
                found: None,
                refetched_after_failure: None,
            },
        );
    }

    /// A login failed against `user`'s cached secret: true when a refetch may
    /// run now (the user was found, and no failure caused one within
    /// `refetch_interval`); the time is taken, so racing failures refetch once.
    pub fn claim_refetch_after_failure(&mut self, user: &str, now: Instant) -> bool {
        let Some(slot) = self.slots.get_mut(user) else {
            return false;
        };
        if slot.found.is_none() {
            return false;
        }
        let due = slot
            .refetched_after_failure
            .is_none_or(|last| now.saturating_duration_since(last) >= self.refetch_interval);
        if due {
            slot.refetched_after_failure = Some(now);
        }
        due
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.len()
    }

    fn forget_expired_unknowns(&mut self, now: Instant) {
        let negative_ttl = self.negative_ttl;
        self.slots.retain(|_, slot| {
            slot.found.is_some() || now.saturating_duration_since(slot.answered_at) < negative_ttl
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::stored::StoredPassword;
    use crate::config::{ClientAuthMethod, Secret};

    const TTL: Duration = Duration::from_secs(60);
    const NEGATIVE_TTL: Duration = Duration::from_secs(5);
    const REFETCH: Duration = Duration::from_secs(1);

    fn entry(hash: &str) -> Arc<UserEntry> {
        let stored = StoredPassword::parse(hash).expect("an MD5 hash");
        Arc::new(UserEntry::from_stored(
            "alice",
            Secret::new(hash),
            stored,
            ClientAuthMethod::Md5,
        ))
    }

    fn cache() -> Cache {
        Cache::new(TTL, NEGATIVE_TTL, REFETCH)
    }

    fn password_of(entry: Option<Arc<UserEntry>>) -> Option<String> {
        entry.map(|e| e.password.expose().to_string())
    }

    const HASH_A: &str = "md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const HASH_B: &str = "md5bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn a_found_user_is_fresh_for_the_ttl_then_stale_but_kept() {
        let t0 = Instant::now();
        let mut cache = cache();
        assert!(matches!(cache.look("alice", t0), Cached::Absent));
        cache.found("alice", entry(HASH_A), t0);
        let just_before = t0 + TTL - Duration::from_millis(1);
        assert!(matches!(
            cache.look("alice", just_before),
            Cached::Fresh(Some(_))
        ));
        assert!(matches!(cache.look("alice", t0 + TTL), Cached::Expired));
        // Long after, the stale entry is still there for when no node answers.
        assert!(matches!(
            cache.look("alice", t0 + TTL * 100),
            Cached::Expired
        ));
        assert_eq!(
            password_of(cache.last_found("alice")).as_deref(),
            Some(HASH_A)
        );
    }

    #[test]
    fn an_unknown_name_is_remembered_for_the_shorter_negative_ttl() {
        let t0 = Instant::now();
        let mut cache = cache();
        cache.not_found("mallory", t0);
        assert!(matches!(
            cache.look("mallory", t0 + NEGATIVE_TTL - Duration::from_millis(1)),
            Cached::Fresh(None)
        ));
        assert!(matches!(
            cache.look("mallory", t0 + NEGATIVE_TTL),
            Cached::Expired
        ));
        assert!(
            cache.last_found("mallory").is_none(),
            "nothing stale to use"
        );
    }

    #[test]
    fn no_such_user_replaces_a_found_entry_and_a_refetch_replaces_it_again() {
        let t0 = Instant::now();
        let mut cache = cache();
        cache.found("alice", entry(HASH_A), t0);
        let t1 = t0 + TTL;
        cache.not_found("alice", t1);
        assert!(matches!(cache.look("alice", t1), Cached::Fresh(None)));
        assert!(
            cache.last_found("alice").is_none(),
            "a dropped role is gone"
        );
        let t2 = t1 + NEGATIVE_TTL;
        cache.found("alice", entry(HASH_B), t2);
        assert!(matches!(cache.look("alice", t2), Cached::Fresh(Some(_))));
        assert_eq!(
            password_of(cache.last_found("alice")).as_deref(),
            Some(HASH_B)
        );
    }

    #[test]
    fn failed_logins_refetch_at_most_once_per_interval_and_only_for_found_users() {
        let t0 = Instant::now();
        let mut cache = cache();
        assert!(
            !cache.claim_refetch_after_failure("alice", t0),
            "never asked"
        );
        cache.not_found("mallory", t0);
        assert!(
            !cache.claim_refetch_after_failure("mallory", t0),
            "unknown names wait for the negative ttl"
        );
        cache.found("alice", entry(HASH_A), t0);
        assert!(cache.claim_refetch_after_failure("alice", t0));
        assert!(!cache.claim_refetch_after_failure("alice", t0));
        assert!(
            !cache.claim_refetch_after_failure("alice", t0 + REFETCH - Duration::from_millis(1))
        );
        assert!(cache.claim_refetch_after_failure("alice", t0 + REFETCH));
    }

    #[test]
    fn a_flood_of_unknown_names_is_bounded() {
        let t0 = Instant::now();
        let mut cache = cache();
        cache.found("alice", entry(HASH_A), t0);
        for i in 0..MAX_ENTRIES + 10 {
            cache.not_found(&format!("random-{i}"), t0);
        }
        assert_eq!(cache.len(), MAX_ENTRIES);
        // Once those expired, new names push them out; found users stay.
        let later = t0 + NEGATIVE_TTL;
        cache.not_found("one-more", later);
        assert_eq!(cache.len(), 2);
        assert!(cache.last_found("alice").is_some());
        assert!(matches!(cache.look("one-more", later), Cached::Fresh(None)));
    }
}
