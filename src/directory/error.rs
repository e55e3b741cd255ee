//! [`DirectoryError`]: what went wrong, in words an administrator can act on, and whether
//! trying again later can help (its [`Classify`] class).
//!
//! ldap3's errors and LDAP result codes are converted here, once; AD's numeric codes become
//! sentences through [`super::ad`]. Server text is passed through [`crate::secret::redact`]
//! before it is kept, and no variant ever holds a password.

use std::time::Duration;

use ldap3::{LdapError, LdapResult};

use super::ad;
use crate::class::{Class, Classify};
use crate::secret::redact;

/// A failed directory operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DirectoryError {
    /// No connection could be opened (refused, no route, DNS): the server is down or far.
    #[error("directory at {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    /// An open connection broke while an operation was under way.
    #[error("the connection to the directory was lost: {0}")]
    ConnectionLost(String),
    /// The server did not answer in time.
    #[error("{op} timed out after {after:?}")]
    Timeout { op: String, after: Duration },
    /// The server answered busy, unavailable or over a time limit.
    #[error("the directory is busy or unavailable: {0}")]
    Busy(String),
    /// The bind was refused. Kept transient: the seed's flow keeps the work and retries it,
    /// and a locked or expired service account is fixed by an administrator, not by the data.
    #[error("bind as {bind_dn} failed: {reason}")]
    BindFailed { bind_dn: String, reason: String },
    /// The TLS handshake failed (certificate not trusted, name mismatch, protocol).
    #[error("TLS with {url} failed: {reason} (set ca_file to the issuing CA, or tls_verify = false for a lab)")]
    Tls { url: String, reason: String },
    /// A password would have gone over an unencrypted connection; nothing was sent.
    #[error(
        "refusing to send a password to directory {directory} over an unencrypted connection: use an ldaps:// url or starttls = true"
    )]
    InsecureConnection { directory: String },
    /// The named user, group or entry does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// An identifier matched more than one entry.
    #[error("{what} matches {count} entries; name it by DN instead")]
    Ambiguous { what: String, count: usize },
    /// The entry found is not one the operation may change (the Flex HR sync found its
    /// employee ID on an account outside `user_search_bases`, or on a privileged one).
    /// Nothing was changed; a person must look.
    #[error("{what} is {dn}, {reason}: nothing was changed; {fix}")]
    Conflict { what: String, dn: String, reason: String, fix: String },
    /// The entry, or a value that must be unique, already exists.
    #[error("{op}: {reason}")]
    AlreadyExists { op: String, reason: String },
    /// The server refused the operation (constraint, policy, access, schema).
    #[error("{op}: {reason}")]
    Rejected { op: String, code: u32, reason: String },
    /// The caller's input cannot be sent (bad DN, identifier, attribute name, value).
    #[error("{0}")]
    InvalidInput(String),
    /// The operation does not exist for this kind of directory.
    #[error("{0}")]
    Unsupported(String),
    /// The directory's configuration cannot be used.
    #[error("directory configuration: {0}")]
    Config(String),
}

impl Classify for DirectoryError {
    /// Transient when the same call may succeed later without anyone changing the input: the
    /// engine retries these (server down, connection lost, timeout, busy, bind refused).
    fn class(&self) -> Class {
        match self {
            Self::Unreachable { .. }
            | Self::ConnectionLost(_)
            | Self::Timeout { .. }
            | Self::Busy(_)
            | Self::BindFailed { .. } => Class::Transient,
            _ => Class::Permanent,
        }
    }
}

impl DirectoryError {
    /// A stable short name of the variant, for scripts and JSON (`"not_found"`, ...).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unreachable { .. } => "unreachable",
            Self::ConnectionLost(_) => "connection_lost",
            Self::Timeout { .. } => "timeout",
            Self::Busy(_) => "busy",
            Self::BindFailed { .. } => "bind_failed",
            Self::Tls { .. } => "tls",
            Self::InsecureConnection { .. } => "insecure_connection",
            Self::NotFound(_) => "not_found",
            Self::Ambiguous { .. } => "ambiguous",
            Self::Conflict { .. } => "conflict",
            Self::AlreadyExists { .. } => "already_exists",
            Self::Rejected { .. } => "rejected",
            Self::InvalidInput(_) => "invalid_input",
            Self::Unsupported(_) => "unsupported",
            Self::Config(_) => "config",
        }
    }

    /// The LDAP result code the server answered, when there was one.
    pub fn ldap_code(&self) -> Option<u32> {
        match self {
            Self::Rejected { code, .. } => Some(*code),
            Self::AlreadyExists { .. } => Some(68),
            _ => None,
        }
    }

    /// Whether the error is the connection's (opening it, binding, TLS, losing it, or no
    /// answer in time), not the operation's: another operation sent at the time would have
    /// met it too.
    pub(crate) fn is_the_connections(&self) -> bool {
        matches!(
            self,
            Self::Unreachable { .. }
                | Self::ConnectionLost(_)
                | Self::Timeout { .. }
                | Self::BindFailed { .. }
                | Self::Tls { .. }
                | Self::InsecureConnection { .. }
        )
    }

    /// Whether the connection this came from should be dropped and opened again.
    pub(crate) fn breaks_connection(&self) -> bool {
        matches!(self, Self::ConnectionLost(_) | Self::Unreachable { .. })
    }

    /// Converts an error of an operation (`op` names it and its target: "create CN=x,...").
    pub(crate) fn from_ldap(op: &str, err: LdapError, timeout: Duration) -> Self {
        match err {
            LdapError::LdapResult { result } => Self::from_result(op, &result),
            LdapError::Timeout { .. } => Self::Timeout { op: op.to_string(), after: timeout },
            LdapError::NativeTLS { source } => Self::Tls { url: String::new(), reason: source.to_string() },
            LdapError::Io { source } => Self::ConnectionLost(source.to_string()),
            LdapError::OpSend { .. }
            | LdapError::ResultRecv { .. }
            | LdapError::IdScrubSend { .. }
            | LdapError::MiscSend { .. }
            | LdapError::EndOfStream => Self::ConnectionLost(format!("{op}: the server closed the connection")),
            LdapError::AddNoValues => Self::InvalidInput(format!("{op}: an attribute has no values")),
            LdapError::FilterParsing => Self::InvalidInput(format!("{op}: the search filter does not parse")),
            other => Self::Rejected { op: op.to_string(), code: 80, reason: redact(&other.to_string()).into_owned() },
        }
    }

    /// Converts a result with an error code.
    pub(crate) fn from_result(op: &str, result: &LdapResult) -> Self {
        let text = redact(result.text.trim_end_matches('\0').trim()).into_owned();
        let reason = match ad::op_sentence(&text) {
            Some(sentence) => sentence.to_string(),
            None => {
                let generic = rc_sentence(result.rc);
                if text.is_empty() {
                    generic.to_string()
                } else {
                    format!("{generic} ({text})")
                }
            }
        };
        let op = op.to_string();
        match result.rc {
            32 => Self::NotFound(match result.matched.is_empty() {
                true => op,
                false => format!("{op} (the deepest existing entry is {})", result.matched),
            }),
            68 => Self::AlreadyExists { op, reason },
            3 | 51 | 52 => Self::Busy(format!("{op}: {reason}")),
            _ if ad::win32_code(&text) == Some(0x524) || ad::win32_code(&text) == Some(0x2071) => {
                Self::AlreadyExists { op, reason }
            }
            code => Self::Rejected { op, code, reason },
        }
    }
}

/// The standard meaning of an LDAP result code, as a sentence.
pub fn rc_sentence(rc: u32) -> &'static str {
    match rc {
        1 => "the server hit an internal error",
        2 => "protocol error",
        3 => "the server's time limit was exceeded",
        4 => "too many results (size limit)",
        7 | 48 => "the authentication method is not allowed",
        8 | 13 => "the server requires an encrypted connection or stronger authentication",
        11 => "an administrative limit was exceeded",
        16 => "the attribute has no such value",
        17 => "the attribute does not exist in the schema",
        19 => "a constraint was violated",
        20 => "the value is already there",
        21 => "a value does not have the syntax of its attribute",
        32 => "no such entry",
        34 => "a DN is malformed",
        49 => "invalid credentials",
        50 => "the bind account lacks the rights for this",
        51 => "the server is busy",
        52 => "the server is unavailable",
        53 => "the server is unwilling to perform this",
        64 => "the name is not allowed here (naming violation)",
        65 => "the entry would break its object classes' rules",
        66 => "the entry has children",
        67 => "the naming attribute cannot be changed this way",
        68 => "the entry already exists",
        69 => "object classes cannot be changed",
        _ => "the server refused the operation",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(rc: u32, text: &str) -> LdapResult {
        LdapResult { rc, matched: String::new(), text: text.into(), refs: vec![], ctrls: vec![] }
    }

    #[test]
    fn ad_codes_classify_and_read_well() {
        let e = DirectoryError::from_result("create CN=x", &result(19, "0000052D: Constraint violation - too short"));
        assert!(!e.is_transient());
        assert_eq!(e.ldap_code(), Some(19));
        assert_eq!(
            e.to_string(),
            "create CN=x: the password does not meet the domain's policy (length, complexity or history)"
        );
        let e = DirectoryError::from_result(
            "create CN=x",
            &result(68, "00002071: samldb: Account name (sAMAccountName) 'x' already in use!"),
        );
        assert!(matches!(e, DirectoryError::AlreadyExists { .. }));
        assert_eq!(e.to_string(), "create CN=x: sAMAccountName already in use");
        let e = DirectoryError::from_result("modify CN=x", &result(53, "server said no"));
        assert_eq!(e.to_string(), "modify CN=x: the server is unwilling to perform this (server said no)");
    }

    #[test]
    fn transient_and_permanent() {
        assert!(DirectoryError::from_result("search", &result(51, "")).is_transient());
        assert!(DirectoryError::from_result("search", &result(52, "")).is_transient());
        assert!(!DirectoryError::from_result("search", &result(32, "")).is_transient());
        assert!(!DirectoryError::from_result("add", &result(65, "")).is_transient());
        let io = LdapError::Io { source: std::io::Error::from(std::io::ErrorKind::ConnectionReset) };
        let e = DirectoryError::from_ldap("search", io, Duration::from_secs(1));
        assert!(e.is_transient() && e.breaks_connection());
        let t = DirectoryError::from_ldap(
            "search",
            LdapError::Timeout { elapsed: tokio_elapsed() },
            Duration::from_secs(2),
        );
        assert_eq!(t.to_string(), "search timed out after 2s");
        assert!(t.is_transient());
        assert!(DirectoryError::BindFailed { bind_dn: "x".into(), reason: "y".into() }.is_transient());
        assert!(!DirectoryError::InsecureConnection { directory: "AD".into() }.is_transient());
    }

    fn tokio_elapsed() -> tokio::time::error::Elapsed {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(async { tokio::time::timeout(Duration::from_millis(1), std::future::pending::<()>()).await })
            .unwrap_err()
    }
}
