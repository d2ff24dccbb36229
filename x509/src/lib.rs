//! A minimal DER reader for what Skiff needs from X.509: a certificate's subject
//! (CommonName and Organizations, the user and groups of a client certificate), its
//! subjectPublicKeyInfo (the CA hash of `skiff join`), and the TLV walk that
//! certificate requests are read with. Shared by the store (etcd's certificate CN as
//! user) and the API server; it owns nothing else and depends on nothing.

/// One DER element: (tag, contents, rest).
pub fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, &x| (acc << 8) | x as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

pub const SEQUENCE: u8 = 0x30;
pub const SET: u8 = 0x31;
pub const OID: u8 = 0x06;
pub const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
pub const OID_O: &[u8] = &[0x55, 0x04, 0x0a];

/// The fields of a certificate's TBSCertificate after the optional `[0]` version:
/// serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo, ...
fn tbs_fields(der: &[u8]) -> Option<&[u8]> {
    let (tag, cert, _) = tlv(der)?;
    let (tag2, tbs, _) = tlv(cert)?;
    if tag != SEQUENCE || tag2 != SEQUENCE {
        return None;
    }
    if tbs.first() == Some(&0xa0) {
        return Some(tlv(tbs)?.2);
    }
    Some(tbs)
}

/// The `n`th TBSCertificate field (counted as in [`tbs_fields`]), as (tag, contents,
/// the whole element with its tag and length).
fn tbs_field(der: &[u8], n: usize) -> Option<(u8, &[u8], &[u8])> {
    let mut rest = tbs_fields(der)?;
    for _ in 0..n {
        rest = tlv(rest)?.2;
    }
    let (tag, contents, after) = tlv(rest)?;
    Some((tag, contents, &rest[..rest.len() - after.len()]))
}

/// The subjectPublicKeyInfo element (tag and length included) of a certificate.
pub fn public_key_info(der: &[u8]) -> Option<&[u8]> {
    let (tag, _, whole) = tbs_field(der, 5)?;
    (tag == SEQUENCE).then_some(whole)
}

/// (CommonName, Organizations) of a certificate's subject.
pub fn subject(der: &[u8]) -> Option<(String, Vec<String>)> {
    let (tag, name, _) = tbs_field(der, 4)?;
    if tag != SEQUENCE {
        return None;
    }
    name_parts(name)
}

/// (CommonName, Organizations) of the contents of an X.501 Name.
pub fn name_parts(mut name: &[u8]) -> Option<(String, Vec<String>)> {
    let (mut cn, mut orgs) = (String::new(), Vec::new());
    while !name.is_empty() {
        let (tag, mut rdn, next) = tlv(name)?;
        name = next;
        if tag != SET {
            return None;
        }
        while !rdn.is_empty() {
            let (tag, atv, next) = tlv(rdn)?;
            rdn = next;
            if tag != SEQUENCE {
                return None;
            }
            let (tag, oid, value) = tlv(atv)?;
            if tag != OID {
                return None;
            }
            let (_, text, _) = tlv(value)?;
            let text = String::from_utf8_lossy(text).into_owned();
            match oid {
                OID_CN => cn = text,
                OID_O => orgs.push(text),
                _ => {}
            }
        }
    }
    Some((cn, orgs))
}
