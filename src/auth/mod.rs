//! Password authentication primitives for the PostgreSQL wire protocol.
//!
//! This module owns the pure, I/O-free parts of authentication: the legacy
//! MD5 challenge/response ([`md5`]) and SCRAM-SHA-256 ([`scram`]) for both
//! directions (the proxy authenticating a connecting client, and the proxy
//! authenticating itself to a PostgreSQL server), plus the shared
//! [`AuthError`] type; which methods a server may ask for ([`require`]); and
//! where key derivation runs ([`kdf`], the one part that touches the runtime).
//! Every byte handed to these functions is treated as untrusted: malformed
//! input yields an error, never a panic.

pub mod kdf;
pub mod md5;
pub mod require;
pub mod scram;
pub mod stored;

/// Why an authentication exchange failed.
///
/// The `Display` texts never echo secrets or raw peer input, so they are safe
/// to log and, where appropriate, to send to a client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// A SCRAM message did not follow the RFC 5802 grammar.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The client asked for channel binding (`p=...`) where it is not offered
    /// (not on TLS) or of a type other than `tls-server-end-point`.
    #[error("SCRAM channel binding is not supported here")]
    UnsupportedChannelBinding,
    /// The client said it supports channel binding but believes the server does
    /// not (`y`), on a connection where SCRAM-SHA-256-PLUS was offered: the offer
    /// was removed on the way (RFC 5802 section 6, a downgrade attack).
    #[error("SCRAM channel binding negotiation error: the client supports channel binding but thinks the server does not, and this server does")]
    ChannelBindingDowngrade,
    /// The client's `c=` attribute did not match the GS2 header it sent first.
    #[error("SCRAM channel binding check failed")]
    ChannelBindingMismatch,
    /// The client sent an authorization identity (`a=...`), which PostgreSQL
    /// does not support.
    #[error("SCRAM authorization identity is not supported")]
    UnsupportedAuthzid,
    /// The nonce in a later message did not match the one negotiated so far.
    #[error("SCRAM nonce mismatch")]
    NonceMismatch,
    /// The client's proof did not verify: wrong password.
    #[error("password authentication failed: invalid SCRAM client proof")]
    InvalidProof,
    /// The server's signature did not verify: the server does not know the
    /// password's verifier (possible impersonation).
    #[error("invalid SCRAM server signature")]
    InvalidServerSignature,
    /// The server sent an iteration count that is zero or unreasonably large.
    #[error(
        "unacceptable SCRAM iteration count {0} (Switchyard accepts 1 to {max})",
        max = scram::MAX_ITERATIONS
    )]
    BadIterationCount(u32),
    /// The server ended the exchange with `e=<error>`.
    #[error("SCRAM server error: {0}")]
    ServerError(String),
    /// A stored SCRAM verifier could not be parsed.
    #[error("invalid SCRAM verifier: {0}")]
    BadVerifier(String),
    /// A step of the exchange was called out of order (or after a failure).
    #[error("SCRAM exchange step out of order: {0}")]
    OutOfOrder(&'static str),
}
