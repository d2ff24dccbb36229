//! Byte layouts of everything Skiff keeps in rocksdb.
//!
//! The MVCC keyspace needs no in-memory index: every version of a user key is its own
//! rocksdb key `escape(user_key) ++ !revision` (big-endian). The escaping keeps user
//! keys in their byte order and makes each encoding prefix-free, and the inverted
//! revision puts the newest version first, so "the value of K at revision R" is one
//! seek to `escape(K) ++ !R`. Start-up therefore costs nothing per key.

/// Appends the order-preserving, prefix-free encoding of `user` to `out`:
/// every 0x00 becomes 0x00 0xFF and the key ends with 0x00 0x01.
pub fn escape_into(user: &[u8], out: &mut Vec<u8>) {
    out.reserve(user.len() + 2 + 8);
    for &b in user {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0x00, 0x01]);
}

pub fn escape(user: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    escape_into(user, &mut out);
    out
}

/// Decodes an escaped key, returning the user key and the length consumed.
pub fn unescape(enc: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut out = Vec::with_capacity(enc.len());
    let mut i = 0;
    while i < enc.len() {
        let b = enc[i];
        if b == 0 {
            match enc.get(i + 1) {
                Some(0xFF) => {
                    out.push(0);
                    i += 2;
                }
                Some(0x01) => return Some((out, i + 2)),
                _ => return None,
            }
        } else {
            out.push(b);
            i += 1;
        }
    }
    None
}

/// The rocksdb key of `user` at `rev`.
pub fn version_key(user: &[u8], rev: i64) -> Vec<u8> {
    let mut k = escape(user);
    k.extend_from_slice(&(!(rev as u64)).to_be_bytes());
    k
}

/// The rocksdb key just after every version of the escaped key `escaped`.
pub fn after_all_versions(escaped: &[u8]) -> Vec<u8> {
    let mut k = escaped.to_vec();
    k.extend_from_slice(&[0xFF; 8]);
    k
}

/// Splits a version key into its escaped user-key part and its revision.
pub fn split_version_key(k: &[u8]) -> Option<(&[u8], i64)> {
    if k.len() < 10 {
        return None;
    }
    let (escaped, rev) = k.split_at(k.len() - 8);
    let inv = u64::from_be_bytes(rev.try_into().ok()?);
    Some((escaped, (!inv) as i64))
}

/// Keys of the revision log: the revision, big-endian, so the log is in order.
pub fn rev_key(rev: i64) -> [u8; 8] {
    (rev as u64).to_be_bytes()
}

pub fn parse_rev_key(k: &[u8]) -> Option<i64> {
    Some(u64::from_be_bytes(k.try_into().ok()?) as i64)
}

/// Raft log keys: the index, big-endian.
pub fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

pub fn parse_log_key(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.try_into().ok()?))
}

/// The smallest key greater than every key that has `prefix` as a prefix, or `None`
/// when no such key exists (all 0xFF). Used by tools, e.g. `get --prefix`.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_preserves_order_and_is_prefix_free() {
        let keys: Vec<&[u8]> = vec![b"", b"\0", b"\0\0", b"\0\x01", b"a", b"a\0", b"a\0b", b"ab", b"b", b"\xff"];
        for w in keys.windows(2) {
            assert!(w[0] < w[1]);
            assert!(escape(w[0]) < escape(w[1]), "{:?} vs {:?}", w[0], w[1]);
        }
        for a in &keys {
            for b in &keys {
                if a != b {
                    assert!(!escape(b).starts_with(&escape(a)), "{a:?} prefix of {b:?}");
                }
            }
            let enc = escape(a);
            assert_eq!(unescape(&enc), Some((a.to_vec(), enc.len())));
        }
    }

    #[test]
    fn newest_version_sorts_first_and_all_versions_group_together() {
        let v5 = version_key(b"k", 5);
        let v3 = version_key(b"k", 3);
        let other = version_key(b"k\0", 9);
        assert!(v5 < v3);
        assert!(v3 < after_all_versions(&escape(b"k")));
        assert!(after_all_versions(&escape(b"k")) < other);
        let (esc, rev) = split_version_key(&v3).unwrap();
        assert_eq!(esc, escape(b"k").as_slice());
        assert_eq!(rev, 3);
    }

    #[test]
    fn prefix_end_matches_etcd() {
        assert_eq!(prefix_end(b"abc"), Some(b"abd".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
    }
}
