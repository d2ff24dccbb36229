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

/// The subjectPublicKeyInfo element (tag and length included) of a certificate.
pub fn public_key_info(der: &[u8]) -> Option<&[u8]> {
    let (_, cert, _) = tlv(der)?;
    let (_, tbs, _) = tlv(cert)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest)?.2;
    }
    // serialNumber, signature, issuer, validity, subject
    for _ in 0..5 {
        rest = tlv(rest)?.2;
    }
    let (tag, _, after) = tlv(rest)?;
    (tag == SEQUENCE).then(|| &rest[..rest.len() - after.len()])
}

/// (CommonName, Organizations) of a certificate's subject.
pub fn subject(der: &[u8]) -> Option<(String, Vec<String>)> {
    let (tag, cert, _) = tlv(der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = tlv(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut rest = tbs;
    // [0] version (optional), serialNumber, signature, issuer, validity, subject.
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest)?.2;
    }
    for _ in 0..4 {
        rest = tlv(rest)?.2;
    }
    let (tag, name, _) = tlv(rest)?;
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
