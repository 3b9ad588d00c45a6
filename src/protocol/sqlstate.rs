//! The SQLSTATE codes Switchyard itself reports, named.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlState {
    /// 08006: a server connection failed or broke.
    ConnectionFailure,
    /// 08P01: the client broke the protocol.
    ProtocolViolation,
    /// 0A000: a feature the proxy does not support (protocol version, replication).
    FeatureNotSupported,
    /// 28000: invalid authorization specification.
    InvalidAuthorization,
    /// 28P01: wrong password or unknown user (the same for both, deliberately).
    InvalidPassword,
    /// 53300: too many connections.
    TooManyConnections,
    /// 54000: a client went past one of the proxy's per-client limits.
    ProgramLimitExceeded,
    /// 53400: a configured limit is reached (`pool.max_pools`).
    ConfigurationLimitExceeded,
    /// 25P03: the client stayed idle in a transaction too long.
    IdleInTransactionTimeout,
    /// 57014: a query was given up on (`server.query_timeout`).
    QueryCanceled,
    /// 57P01: the proxy is shutting down.
    AdminShutdown,
    /// 57P03: no node can take this session right now (no primary, no replica).
    CannotConnectNow,
    /// 3D000: database does not exist (from a server, forwarded).
    InvalidCatalogName,
    /// 22023: a parameter value PostgreSQL would refuse (`replication=maybe`).
    InvalidParameterValue,
    /// XX000: an internal error in the proxy.
    Internal,
    /// 42601: an admin console command that does not parse.
    SyntaxError,
    /// 42501: an admin console command the user may not run.
    InsufficientPrivilege,
    /// 55000: an admin command that does not apply now (RESUME when not paused).
    ObjectNotInPrerequisiteState,
    /// 42704: an admin command names a database or client that does not exist.
    UndefinedObject,
    /// F0000: a reload asked for from the admin console failed.
    ConfigFileError,
    /// 55P02: a startup `options` switch sets what only a server restart changes.
    CantChangeRuntimeParam,
}

impl SqlState {
    pub fn code(self) -> &'static str {
        match self {
            SqlState::ConnectionFailure => "08006",
            SqlState::ProtocolViolation => "08P01",
            SqlState::FeatureNotSupported => "0A000",
            SqlState::InvalidAuthorization => "28000",
            SqlState::InvalidPassword => "28P01",
            SqlState::TooManyConnections => "53300",
            SqlState::ProgramLimitExceeded => "54000",
            SqlState::ConfigurationLimitExceeded => "53400",
            SqlState::IdleInTransactionTimeout => "25P03",
            SqlState::QueryCanceled => "57014",
            SqlState::AdminShutdown => "57P01",
            SqlState::CannotConnectNow => "57P03",
            SqlState::InvalidCatalogName => "3D000",
            SqlState::InvalidParameterValue => "22023",
            SqlState::Internal => "XX000",
            SqlState::SyntaxError => "42601",
            SqlState::InsufficientPrivilege => "42501",
            SqlState::ObjectNotInPrerequisiteState => "55000",
            SqlState::UndefinedObject => "42704",
            SqlState::ConfigFileError => "F0000",
            SqlState::CantChangeRuntimeParam => "55P02",
        }
    }
}
