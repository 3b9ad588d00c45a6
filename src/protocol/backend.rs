//! Parsers for the few server messages the proxy reads itself while logging in to a
//! PostgreSQL server (authentication requests, ParameterStatus, BackendKeyData,
//! ErrorResponse fields) and, off the hot path, the DataRows of its own queries. Server bytes are parsed defensively: a malformed message is
//! an error, never a panic.

use super::split_cstr;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("malformed {0} from server")]
pub struct MalformedServerMessage(pub &'static str);

/// An authentication request ('R') from a server.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthRequest<'a> {
    Ok,
    Cleartext,
    Md5 {
        salt: [u8; 4],
    },
    Sasl {
        mechanisms: Vec<&'a [u8]>,
    },
    SaslContinue(&'a [u8]),
    SaslFinal(&'a [u8]),
    /// Kerberos, GSS, SSPI...: methods a proxy cannot take part in.
    Unsupported(u32),
}

pub fn parse_auth_request(body: &[u8]) -> Result<AuthRequest<'_>, MalformedServerMessage> {
    let malformed = MalformedServerMessage("authentication request");
    let (code, rest) = body.split_first_chunk::<4>().ok_or(malformed.clone())?;
    Ok(match u32::from_be_bytes(*code) {
        0 => AuthRequest::Ok,
        3 => AuthRequest::Cleartext,
        5 => {
            let salt = rest.first_chunk::<4>().ok_or(malformed)?;
            AuthRequest::Md5 { salt: *salt }
        }
        10 => {
            let mut mechanisms = Vec::new();
            let mut rest = rest;
            loop {
                let (name, after) = split_cstr(rest).ok_or(malformed.clone())?;
                if name.is_empty() {
                    break;
                }
                mechanisms.push(name);
                rest = after;
            }
            AuthRequest::Sasl { mechanisms }
        }
        11 => AuthRequest::SaslContinue(rest),
        12 => AuthRequest::SaslFinal(rest),
        other => AuthRequest::Unsupported(other),
    })
}

/// ParameterStatus: name and value.
pub fn parse_parameter_status(body: &[u8]) -> Result<(String, String), MalformedServerMessage> {
    let malformed = MalformedServerMessage("ParameterStatus");
    let (name, rest) = split_cstr(body).ok_or(malformed.clone())?;
    let (value, _) = split_cstr(rest).ok_or(malformed)?;
    Ok((
        String::from_utf8_lossy(name).into_owned(),
        String::from_utf8_lossy(value).into_owned(),
    ))
}

/// BackendKeyData with protocol 3.0's 4-byte secret.
pub fn parse_backend_key_data(body: &[u8]) -> Result<(i32, i32), MalformedServerMessage> {
    let malformed = MalformedServerMessage("BackendKeyData");
    let (pid, rest) = body.split_first_chunk::<4>().ok_or(malformed.clone())?;
    let secret = rest.first_chunk::<4>().ok_or(malformed)?;
    Ok((i32::from_be_bytes(*pid), i32::from_be_bytes(*secret)))
}

/// The fields of an ErrorResponse or NoticeResponse, for logs and decisions.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
}

pub fn parse_error_fields(body: &[u8]) -> ErrorFields {
    let mut fields = ErrorFields::default();
    let mut rest = body;
    while let Some((&kind, after)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        let Some((value, next)) = split_cstr(after) else {
            break;
        };
        let value = String::from_utf8_lossy(value).into_owned();
        match kind {
            b'V' => fields.severity = value,
            b'S' if fields.severity.is_empty() => fields.severity = value,
            b'C' => fields.code = value,
            b'M' => fields.message = value,
            _ => {}
        }
        rest = next;
    }
    fields
}

/// A DataRow's columns in text format (`None` for NULL), decoded lossily as UTF-8.
pub fn parse_data_row(body: &[u8]) -> Result<Vec<Option<String>>, MalformedServerMessage> {
    let malformed = MalformedServerMessage("DataRow");
    let (count, mut rest) = body.split_first_chunk::<2>().ok_or(malformed.clone())?;
    let count = u16::from_be_bytes(*count);
    let mut columns = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let (len, after) = rest.split_first_chunk::<4>().ok_or(malformed.clone())?;
        let len = i32::from_be_bytes(*len);
        if len < 0 {
            columns.push(None);
            rest = after;
            continue;
        }
        let len = usize::try_from(len).map_err(|_| malformed.clone())?;
        if after.len() < len {
            return Err(malformed);
        }
        let (value, after) = after.split_at(len);
        columns.push(Some(String::from_utf8_lossy(value).into_owned()));
        rest = after;
    }
    Ok(columns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_auth_requests() {
        assert_eq!(parse_auth_request(&[0, 0, 0, 0]), Ok(AuthRequest::Ok));
        assert_eq!(
            parse_auth_request(&[0, 0, 0, 5, 1, 2, 3, 4]),
            Ok(AuthRequest::Md5 { salt: [1, 2, 3, 4] })
        );
        let mut sasl = vec![0, 0, 0, 10];
        sasl.extend_from_slice(b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
        assert_eq!(
            parse_auth_request(&sasl),
            Ok(AuthRequest::Sasl {
                mechanisms: vec![&b"SCRAM-SHA-256-PLUS"[..], &b"SCRAM-SHA-256"[..]]
            })
        );
        assert!(parse_auth_request(&[0, 0, 0, 5, 1]).is_err());
        assert!(parse_auth_request(&[0, 0]).is_err());
        assert!(parse_auth_request(&[0, 0, 0, 10, b'x']).is_err());
        assert_eq!(
            parse_auth_request(&[0, 0, 0, 7]),
            Ok(AuthRequest::Unsupported(7))
        );
    }

    #[test]
    fn parses_error_fields_even_when_truncated() {
        let body = b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed\0\0";
        let fields = parse_error_fields(body);
        assert_eq!(fields.code, "28P01");
        assert_eq!(fields.severity, "FATAL");
        assert_eq!(fields.message, "password authentication failed");
        let truncated = parse_error_fields(b"SERROR\0C4");
        assert_eq!(truncated.severity, "ERROR");
        assert_eq!(truncated.code, "");
    }

    #[test]
    fn parses_key_data_and_parameters() {
        assert_eq!(
            parse_backend_key_data(&[0, 0, 0, 9, 0, 0, 1, 0]),
            Ok((9, 256))
        );
        assert!(parse_backend_key_data(&[0, 0, 0, 9]).is_err());
        assert_eq!(
            parse_parameter_status(b"TimeZone\0UTC\0"),
            Ok(("TimeZone".into(), "UTC".into()))
        );
        assert!(parse_parameter_status(b"TimeZone\0UTC").is_err());
    }

    #[test]
    fn parses_data_rows_with_nulls_and_rejects_truncation() {
        let mut body = vec![0, 3];
        body.extend_from_slice(&1i32.to_be_bytes());
        body.push(b't');
        body.extend_from_slice(&(-1i32).to_be_bytes());
        body.extend_from_slice(&9i32.to_be_bytes());
        body.extend_from_slice(b"0/3000148");
        assert_eq!(
            parse_data_row(&body),
            Ok(vec![Some("t".into()), None, Some("0/3000148".into())])
        );
        assert_eq!(parse_data_row(&[0, 0]), Ok(vec![]));
        for cut in [1, 3, 7, 16] {
            assert!(parse_data_row(&body[..cut]).is_err(), "cut at {cut}");
        }
        let mut oversized = vec![0, 1];
        oversized.extend_from_slice(&100i32.to_be_bytes());
        oversized.extend_from_slice(b"short");
        assert!(parse_data_row(&oversized).is_err());
    }
}
