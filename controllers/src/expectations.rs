//! What a controller is waiting to see in its cache after its own writes. Without
//! this, a second reconcile that runs before the watch delivers the pods just
//! created would create them again. An owner's expectations are met when every pod
//! it created is in the cache and every pod it deleted is gone or terminating; they
//! lapse after a timeout so a lost event cannot wedge an owner.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Expect {
    adds: HashSet<String>,
    dels: HashSet<String>,
    at: Option<Instant>,
}

#[derive(Default)]
pub struct Expectations(Mutex<HashMap<String, Expect>>);

impl Expectations {
    pub fn created(&self, owner: &str, name: String) {
        let mut m = self.0.lock().expect("not poisoned");
        let e = m.entry(owner.to_string()).or_default();
        e.adds.insert(name);
        e.at = Some(Instant::now());
    }

    pub fn deleted(&self, owner: &str, name: String) {
        let mut m = self.0.lock().expect("not poisoned");
        let e = m.entry(owner.to_string()).or_default();
        e.dels.insert(name);
        e.at = Some(Instant::now());
    }

    /// Met when `seen(name)` holds for every creation and `gone(name)` for every
    /// deletion. Met expectations are forgotten.
    pub fn met(&self, owner: &str, seen: impl Fn(&str) -> bool, gone: impl Fn(&str) -> bool) -> bool {
        let mut m = self.0.lock().expect("not poisoned");
        let Some(e) = m.get_mut(owner) else { return true };
        e.adds.retain(|n| !seen(n));
        e.dels.retain(|n| !gone(n));
        let lapsed = e.at.is_some_and(|t| t.elapsed() > TIMEOUT);
        if (e.adds.is_empty() && e.dels.is_empty()) || lapsed {
            m.remove(owner);
            return true;
        }
        false
    }

    pub fn forget(&self, owner: &str) {
        self.0.lock().expect("not poisoned").remove(owner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn met_once_everything_is_seen() {
        let x = Expectations::default();
        assert!(x.met("rs", |_| false, |_| false));
        x.created("rs", "a".into());
        x.deleted("rs", "b".into());
        assert!(!x.met("rs", |n| n == "a", |_| false));
        assert!(x.met("rs", |_| false, |n| n == "b"), "a was already seen");
        assert!(x.met("rs", |_| false, |_| false), "forgotten once met");
    }
}
