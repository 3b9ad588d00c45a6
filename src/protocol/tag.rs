//! Message type bytes, named as in PostgreSQL's `protocol.h` (PgBouncer's `PqMsg_*`).
//! The same byte means different messages in the two directions ('D' is Describe
//! from a client and DataRow from a server), so each name says which message it is.

// The whole vocabulary is named, including messages the proxy only forwards.
#![allow(dead_code)]

// Frontend (client to server).
pub const BIND: u8 = b'B';
pub const CLOSE: u8 = b'C';
pub const DESCRIBE: u8 = b'D';
pub const EXECUTE: u8 = b'E';
pub const FUNCTION_CALL: u8 = b'F';
pub const FLUSH: u8 = b'H';
pub const PARSE: u8 = b'P';
pub const QUERY: u8 = b'Q';
pub const SYNC: u8 = b'S';
pub const TERMINATE: u8 = b'X';
pub const COPY_FAIL: u8 = b'f';
/// PasswordMessage, SASLInitialResponse and SASLResponse share it.
pub const PASSWORD_MESSAGE: u8 = b'p';

// Both directions.
pub const COPY_DATA: u8 = b'd';
pub const COPY_DONE: u8 = b'c';

// Backend (server to client).
pub const PARSE_COMPLETE: u8 = b'1';
pub const BIND_COMPLETE: u8 = b'2';
pub const CLOSE_COMPLETE: u8 = b'3';
pub const NOTIFICATION_RESPONSE: u8 = b'A';
pub const COMMAND_COMPLETE: u8 = b'C';
pub const DATA_ROW: u8 = b'D';
pub const ERROR_RESPONSE: u8 = b'E';
pub const COPY_IN_RESPONSE: u8 = b'G';
pub const COPY_OUT_RESPONSE: u8 = b'H';
pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
pub const BACKEND_KEY_DATA: u8 = b'K';
pub const NOTICE_RESPONSE: u8 = b'N';
pub const AUTHENTICATION: u8 = b'R';
pub const PARAMETER_STATUS: u8 = b'S';
pub const ROW_DESCRIPTION: u8 = b'T';
pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
pub const COPY_BOTH_RESPONSE: u8 = b'W';
pub const READY_FOR_QUERY: u8 = b'Z';
pub const NO_DATA: u8 = b'n';
pub const PORTAL_SUSPENDED: u8 = b's';
pub const PARAMETER_DESCRIPTION: u8 = b't';
pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';

/// The object kind in a Describe or Close body.
pub const TARGET_STATEMENT: u8 = b'S';
pub const TARGET_PORTAL: u8 = b'P';

/// The one-byte answer to an SSLRequest: go ahead with the TLS handshake, or not.
pub const ENCRYPTION_ACCEPTED: u8 = b'S';
pub const ENCRYPTION_REFUSED: u8 = b'N';

/// ReadyForQuery's transaction status byte.
pub const STATUS_IDLE: u8 = b'I';
pub const STATUS_IN_TRANSACTION: u8 = b'T';
pub const STATUS_FAILED: u8 = b'E';
