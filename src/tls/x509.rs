//! The few facts the proxy reads from an X.509 certificate itself: when it
//! expires (`notAfter`), its subject's common name (for `auth: cert`) and the
//! hash its signature uses (for `tls-server-end-point` channel binding, RFC 5929).
//! A small DER walker over untrusted bytes: every step is bounds-checked and a
//! malformed certificate is an error, never a panic. Signature checks are
//! rustls's job, not this file's.

use sha2::{Digest, Sha256, Sha384, Sha512};

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
/// `[0] EXPLICIT Version` at the start of a TBSCertificate.
const VERSION_TAG: u8 = 0xa0;

/// id-at-commonName (2.5.4.3).
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
/// Signature algorithms hashed with SHA-384 / SHA-512 (RSA PKCS#1, ECDSA).
const OIDS_SHA384: &[&[u8]] = &[
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c],
    &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],
];
const OIDS_SHA512: &[&[u8]] = &[
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d],
    &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04],
];

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed certificate: {0}")]
pub struct X509Error(&'static str);

/// One DER element: its tag and contents.
struct Element<'a> {
    tag: u8,
    body: &'a [u8],
}

/// Splits the first element off `input`.
fn next(input: &[u8]) -> Result<(Element<'_>, &[u8]), X509Error> {
    let (&tag, rest) = input.split_first().ok_or(X509Error("truncated"))?;
    let (&first, rest) = rest.split_first().ok_or(X509Error("truncated length"))?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let count = (first & 0x7f) as usize;
        if count == 0 || count > 4 || rest.len() < count {
            return Err(X509Error("bad length"));
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | b as usize);
        (len, &rest[count..])
    };
    if rest.len() < len {
        return Err(X509Error("element longer than its container"));
    }
    let (body, rest) = rest.split_at(len);
    Ok((Element { tag, body }, rest))
}

fn expect<'a>(
    input: &'a [u8],
    tag: u8,
    what: &'static str,
) -> Result<(Element<'a>, &'a [u8]), X509Error> {
    let (element, rest) = next(input)?;
    if element.tag != tag {
        return Err(X509Error(what));
    }
    Ok((element, rest))
}

/// The parts of a certificate this module reads.
struct Parts<'a> {
    not_after: Element<'a>,
    subject: &'a [u8],
    signature_oid: &'a [u8],
}

fn parts(der: &[u8]) -> Result<Parts<'_>, X509Error> {
    let (certificate, _) = expect(der, SEQUENCE, "not a SEQUENCE")?;
    let (tbs, rest) = expect(certificate.body, SEQUENCE, "no TBSCertificate")?;
    let (algorithm, _) = expect(rest, SEQUENCE, "no signatureAlgorithm")?;
    let (oid, _) = expect(algorithm.body, OID, "no signature algorithm OID")?;
    let mut fields = tbs.body;
    if fields.first() == Some(&VERSION_TAG) {
        fields = next(fields)?.1;
    }
    let (_serial, fields) = next(fields)?;
    let (_signature, fields) = expect(fields, SEQUENCE, "no signature field")?;
    let (_issuer, fields) = expect(fields, SEQUENCE, "no issuer")?;
    let (validity, fields) = expect(fields, SEQUENCE, "no validity")?;
    let (subject, _) = expect(fields, SEQUENCE, "no subject")?;
    let (_not_before, after) = next(validity.body)?;
    let (not_after, _) = next(after)?;
    Ok(Parts {
        not_after,
        subject: subject.body,
        signature_oid: oid.body,
    })
}

/// The certificate's `notAfter` as seconds since the Unix epoch.
pub fn not_after(der: &[u8]) -> Result<i64, X509Error> {
    let time = parts(der)?.not_after;
    let text = std::str::from_utf8(time.body).map_err(|_| X509Error("time is not ASCII"))?;
    let digits = text
        .strip_suffix('Z')
        .ok_or(X509Error("time is not in UTC"))?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(X509Error("time has non-digits"));
    }
    let number = |range: std::ops::Range<usize>| -> Result<i64, X509Error> {
        digits
            .get(range)
            .and_then(|s| s.parse().ok())
            .ok_or(X509Error("time too short"))
    };
    let (year, rest) = match (time.tag, digits.len()) {
        // RFC 5280: two-digit years 50..99 are 19xx, 00..49 are 20xx.
        (UTC_TIME, 12) => {
            let yy = number(0..2)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
        }
        (GENERALIZED_TIME, 14) => (number(0..4)?, 4),
        _ => return Err(X509Error("unsupported time format")),
    };
    let month = number(rest..rest + 2)?;
    let day = number(rest + 2..rest + 4)?;
    let hour = number(rest + 4..rest + 6)?;
    let minute = number(rest + 6..rest + 8)?;
    let second = number(rest + 8..rest + 10)?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return Err(X509Error("time out of range"));
    }
    Ok(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The subject's common name, if it has one that is text.
pub fn common_name(der: &[u8]) -> Result<Option<String>, X509Error> {
    let mut rdns = parts(der)?.subject;
    while !rdns.is_empty() {
        let (set, rest) = expect(rdns, SET, "subject entry is not a SET")?;
        rdns = rest;
        let mut attributes = set.body;
        while !attributes.is_empty() {
            let (attribute, rest) = expect(attributes, SEQUENCE, "bad subject attribute")?;
            attributes = rest;
            let (oid, value) = expect(attribute.body, OID, "subject attribute without OID")?;
            if oid.body == OID_COMMON_NAME {
                let (value, _) = next(value)?;
                return Ok(std::str::from_utf8(value.body).ok().map(str::to_owned));
            }
        }
    }
    Ok(None)
}

/// `tls-server-end-point` channel binding data (RFC 5929 section 4.1): the
/// certificate hashed with its signature's hash, SHA-256 for MD5 and SHA-1 and
/// anything else (as PostgreSQL does).
pub fn end_point_hash(der: &[u8]) -> Result<Vec<u8>, X509Error> {
    let oid = parts(der)?.signature_oid;
    Ok(if OIDS_SHA384.contains(&oid) {
        Sha384::digest(der).to_vec()
    } else if OIDS_SHA512.contains(&oid) {
        Sha512::digest(der).to_vec()
    } else {
        Sha256::digest(der).to_vec()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2038, 1, 19), 24_855);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for input in [
            &[][..],
            &[0x30],
            &[0x30, 0x85, 1, 2, 3, 4, 5],
            &[0x30, 0x82, 0xff, 0xff],
            &[0x30, 0x03, 0x30, 0x01],
            &[0x30, 0x02, 0x02, 0x00],
        ] {
            assert!(not_after(input).is_err(), "{input:?}");
            assert!(common_name(input).is_err(), "{input:?}");
            assert!(end_point_hash(input).is_err(), "{input:?}");
        }
    }
}
