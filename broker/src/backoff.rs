//! Failed logins slow guessing down: once an address, or a user name, has `after_failures`
//! failed logins, every attempt from it or for it is refused without a password check
//! until a delay has passed since its last failure; the delay doubles with each further
//! failure up to `max_delay`. A user name (or platform client id) and an address are
//! tracked apart, so that neither many addresses nor many user names get around it.
//!
//! Each table holds a fixed number of entries; a new one evicts the entry whose last
//! failure is oldest. User names are kept as keyed hashes: a long one costs no memory.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::LoginBackoffConfig;

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last_failure: Instant,
    /// Refused until then.
    blocked_until: Option<Instant>,
    /// Position in the eviction order.
    stamp: u64,
}

/// Failures by key, at most `capacity` keys.
#[derive(Debug)]
struct Table<K> {
    entries: HashMap<K, Entry>,
    /// Keys by the stamp of their last failure: the oldest first.
    order: BTreeMap<u64, K>,
    next_stamp: u64,
    capacity: usize,
}

impl<K: Hash + Eq + Copy> Table<K> {
    fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            next_stamp: 0,
            capacity,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }

    fn blocked_until(&self, key: &K, now: Instant) -> Option<Instant> {
        self.entries
            .get(key)
            .and_then(|entry| entry.blocked_until)
            .filter(|&until| until > now)
    }

    fn fail(&mut self, key: K, now: Instant, settings: &LoginBackoffConfig) {
        if self.capacity == 0 {
            return;
        }
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        let failures = match self.entries.get(&key) {
            Some(entry) => {
                self.order.remove(&entry.stamp);
                if now.saturating_duration_since(entry.last_failure) >= settings.forget_after {
                    1
                } else {
                    entry.failures.saturating_add(1)
                }
            }
            None => {
                if self.entries.len() >= self.capacity {
                    if let Some((_, oldest)) = self.order.pop_first() {
                        self.entries.remove(&oldest);
                    }
                }
                1
            }
        };
        self.order.insert(stamp, key);
        self.entries.insert(
            key,
            Entry {
                failures,
                last_failure: now,
                blocked_until: settings.delay_after(failures).map(|delay| now + delay),
                stamp,
            },
        );
    }

    fn forget(&mut self, key: &K) {
        if let Some(entry) = self.entries.remove(key) {
            self.order.remove(&entry.stamp);
        }
    }
}

impl LoginBackoffConfig {
    /// How long attempts are refused after the `failures`-th failure in a row.
    fn delay_after(&self, failures: u32) -> Option<Duration> {
        let beyond = failures.checked_sub(self.after_failures)?;
        let factor = 1u32.checked_shl(beyond).unwrap_or(u32::MAX);
        Some(
            self.delay
                .checked_mul(factor)
                .unwrap_or(self.max_delay)
                .min(self.max_delay),
        )
    }
}

/// The key of an address: IPv4 as is, IPv6 by its /64 prefix (what one subscriber
/// usually gets whole).
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

#[derive(Debug)]
struct Tables {
    addresses: Table<IpAddr>,
    users: Table<u64>,
}

/// Failed logins by address and by user name.
#[derive(Debug)]
pub(crate) struct LoginBackoff {
    settings: LoginBackoffConfig,
    tables: Mutex<Tables>,
    hasher: RandomState,
}

impl LoginBackoff {
    pub fn new(settings: LoginBackoffConfig) -> Self {
        Self {
            tables: Mutex::new(Tables {
                addresses: Table::new(settings.tracked),
                users: Table::new(settings.tracked),
            }),
            settings,
            hasher: RandomState::new(),
        }
    }

    /// How long attempts from `ip` or for `user` are still refused; `None`: not refused.
    pub fn blocked(&self, ip: IpAddr, user: &str, now: Instant) -> Option<Duration> {
        let tables = self.tables.lock();
        let until = tables
            .addresses
            .blocked_until(&address_key(ip), now)
            .max(tables.users.blocked_until(&self.hasher.hash_one(user), now))?;
        Some(until - now)
    }

    /// Counts a failed login from `ip` for `user`.
    pub fn failed(&self, ip: IpAddr, user: &str, now: Instant) {
        let user = self.hasher.hash_one(user);
        let mut tables = self.tables.lock();
        tables.addresses.fail(address_key(ip), now, &self.settings);
        tables.users.fail(user, now, &self.settings);
    }

    /// A successful login for `user`: its earlier failures are forgotten. Those of the
    /// address stay (a guesser may also hold a valid account).
    pub fn succeeded(&self, user: &str) {
        let user = self.hasher.hash_one(user);
        self.tables.lock().users.forget(&user);
    }

    #[cfg(test)]
    fn sizes(&self) -> (usize, usize) {
        let tables = self.tables.lock();
        (tables.addresses.len(), tables.users.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(tracked: usize) -> LoginBackoffConfig {
        LoginBackoffConfig {
            after_failures: 3,
            delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(5),
            forget_after: Duration::from_secs(60),
            tracked,
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let delays: Vec<_> = (1..=7)
            .map(|failures| settings(1).delay_after(failures))
            .collect();
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(
            delays,
            [None, None, secs(1), secs(2), secs(4), secs(5), secs(5)]
        );
        assert_eq!(settings(1).delay_after(u32::MAX), secs(5));
    }

    #[test]
    fn addresses_and_users_are_held_apart() {
        let backoff = LoginBackoff::new(settings(100));
        let start = Instant::now();
        for _ in 0..2 {
            backoff.failed(ip("10.0.0.1"), "alice", start);
        }
        assert_eq!(backoff.blocked(ip("10.0.0.1"), "alice", start), None);
        backoff.failed(ip("10.0.0.1"), "alice", start);
        assert_eq!(
            backoff.blocked(ip("10.0.0.1"), "bob", start),
            Some(Duration::from_secs(1)),
            "the address"
        );
        assert_eq!(
            backoff.blocked(ip("10.0.0.2"), "alice", start),
            Some(Duration::from_secs(1)),
            "the user name"
        );
        assert_eq!(backoff.blocked(ip("10.0.0.2"), "bob", start), None);
        let later = start + Duration::from_secs(1);
        assert_eq!(backoff.blocked(ip("10.0.0.1"), "alice", later), None);

        backoff.failed(ip("10.0.0.1"), "alice", later);
        assert_eq!(
            backoff.blocked(ip("10.0.0.1"), "alice", later),
            Some(Duration::from_secs(2))
        );
        backoff.succeeded("alice");
        assert_eq!(
            backoff.blocked(ip("10.0.0.2"), "alice", later),
            None,
            "a success clears the user name"
        );
        assert!(
            backoff.blocked(ip("10.0.0.1"), "bob", later).is_some(),
            "not the address"
        );

        // One IPv6 subscriber's /64 is one address.
        for last in 1..=3 {
            backoff.failed(ip(&format!("2001:db8::{last}")), &format!("u{last}"), start);
        }
        assert!(backoff.blocked(ip("2001:db8::ffff"), "x", start).is_some());
        assert!(backoff.blocked(ip("2001:db8:0:1::1"), "x", start).is_none());
        backoff.failed(ip("::ffff:10.0.0.9"), "x", start);
        assert_eq!(backoff.sizes().0, 3, "IPv4-mapped is IPv4");
    }

    #[test]
    fn failures_are_forgotten_after_a_quiet_time() {
        let backoff = LoginBackoff::new(settings(100));
        let start = Instant::now();
        for _ in 0..3 {
            backoff.failed(ip("10.0.0.1"), "alice", start);
        }
        let quiet = start + Duration::from_secs(60);
        backoff.failed(ip("10.0.0.1"), "alice", quiet);
        assert_eq!(
            backoff.blocked(ip("10.0.0.1"), "alice", quiet),
            None,
            "counting starts again"
        );
    }

    #[test]
    fn tables_stay_bounded_and_evict_the_oldest() {
        let backoff = LoginBackoff::new(settings(4));
        let start = Instant::now();
        for _ in 0..3 {
            backoff.failed(ip("10.0.0.1"), "alice", start);
        }
        for n in 0..1000u32 {
            let [_, _, a, b] = n.to_be_bytes();
            let at = start + Duration::from_millis(u64::from(n));
            backoff.failed(ip(&format!("10.1.{a}.{b}")), &format!("user-{n}"), at);
            assert!(backoff.sizes().0 <= 4 && backoff.sizes().1 <= 4);
        }
        assert_eq!(backoff.sizes(), (4, 4));
        assert_eq!(
            backoff.blocked(ip("10.0.0.1"), "alice", start),
            None,
            "the oldest entries went first"
        );
        // The most recent ones are still counted.
        for _ in 0..2 {
            backoff.failed(ip("10.1.3.231"), "user-999", start + Duration::from_secs(2));
        }
        assert!(backoff
            .blocked(ip("10.1.3.231"), "other", start + Duration::from_secs(2))
            .is_some());

        let off = LoginBackoff::new(settings(0));
        for _ in 0..10 {
            off.failed(ip("10.0.0.1"), "alice", start);
        }
        assert_eq!(off.sizes(), (0, 0));
        assert_eq!(off.blocked(ip("10.0.0.1"), "alice", start), None);
    }
}
