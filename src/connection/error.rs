//! What can go wrong on a connection, and whether trying again later can help.

use std::time::Duration;

use crate::class::{Class, Classify};

/// Every failure of a connection call.
///
/// Messages name the connection, the method and the URL *path* (never the query string, which
/// may carry an API key) and never contain a secret: bodies are scrubbed of the credentials the
/// request carried before they are excerpted.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The peer answered with a status outside 2xx.
    #[error(
        "connection {connection}: {method} {path} answered {status}{}",
        if body_excerpt.is_empty() { String::new() } else { format!(": {body_excerpt}") }
    )]
    Status {
        connection: String,
        method: String,
        path: String,
        status: u16,
        /// The start of the body, on one line, scrubbed of secrets.
        body_excerpt: String,
        /// What the peer asked for in `Retry-After` (429 and 503 answers carry it).
        retry_after: Option<Duration>,
    },
    /// No answer within the connection's `timeout`.
    #[error("connection {connection}: {method} {path} timed out after {}", humantime::format_duration(*timeout))]
    Timeout { connection: String, method: String, path: String, timeout: Duration },
    /// The peer could not be reached (DNS, refused, TLS handshake).
    #[error("connection {connection}: cannot reach {host}: {reason}")]
    Connect { connection: String, host: String, reason: String },
    /// The exchange broke off after it started (reset, truncated body).
    #[error("connection {connection}: {method} {path} failed: {reason}")]
    Transport { connection: String, method: String, path: String, reason: String },
    /// The token endpoint refused or failed to issue a token.
    #[error("connection {connection}: OAuth2 token request failed: {message}")]
    OAuth { connection: String, message: String, class: Class },
    /// An authorization-code connection without a usable token.
    #[error(
        "connection {connection} is not authorized: run `tripline connection authorize {connection}`{}",
        reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default()
    )]
    NotAuthorized { connection: String, reason: Option<String> },
    /// `tripline connection authorize` did not complete.
    #[error("connection {connection}: authorization failed: {message}")]
    Authorize { connection: String, message: String },
    /// Reading or writing the persisted OAuth2 tokens failed.
    #[error("connection {connection}: token store: {message}")]
    TokenStore { connection: String, message: String },
    /// `get_all` found more pages than allowed; nothing is returned rather than a partial list
    /// a sync could mistake for the whole.
    #[error(
        "connection {connection}: GET {path} has more than {max_pages} pages; raise max_pages or narrow the query"
    )]
    TooManyPages { connection: String, path: String, max_pages: u32 },
    /// A page did not have the shape the paging options describe, or the pages and their
    /// total disagree (transient when the list changed while it was read).
    #[error("connection {connection}: paging GET {path}: {message}")]
    Paging { connection: String, path: String, message: String, class: Class },
    /// The connection is configured with `enabled = false`.
    #[error(
        "connection {connection} is disabled (enabled = false in [connections.{connection}]); \
         set enabled = true once its URL and secrets are in place"
    )]
    Disabled { connection: String },
    /// A URL that resolves to another origin than `base_url`'s (another host, port or
    /// scheme), or that carries user info: nothing is sent, since every request carries the
    /// connection's credentials.
    #[error(
        "connection {connection}: {what} leads to {target}, not to {base}: credentials are only sent to \
         base_url's origin, so nothing was sent"
    )]
    ForeignOrigin { connection: String, what: String, target: String, base: String },
    /// A request that is not idempotent (POST, PATCH) was sent, but whether the peer carried
    /// it out is unknown (no answer in time, the exchange broke off, a 5xx that does not say
    /// it was refused). It is not sent again: a repeat could do it twice.
    #[error(
        "connection {connection}: {method} {path} may have been processed ({reason}); it is not sent again, so \
         that it is not done twice: check on the peer, then replay the run (`tripline replay RUN_ID`); an API \
         that accepts idempotency keys can be retried safely with idempotency_header in [connections.{connection}]"
    )]
    OutcomeUnknown { connection: String, method: String, path: String, reason: String },
    /// The run's deadline (`[limits] timeout_ms`) came before the request finished; `sent`
    /// tells whether the request had gone out.
    #[error(
        "connection {connection}: {method} {path} was cut off by the run's time limit ([limits] timeout_ms){}",
        if *sent { "" } else { " before it was sent" }
    )]
    RunDeadline { connection: String, method: String, path: String, sent: bool },
    /// The call itself is wrong: a path to another host, a bad header name, a missing setting.
    #[error("connection {connection}: {message}")]
    Invalid { connection: String, message: String },
}

impl Classify for ConnectionError {
    /// Transient: 408, 429 and 5xx answers, timeouts, unreachable peers, broken exchanges and
    /// token endpoints that are down. Everything else (other 4xx, refused credentials, bad
    /// calls) needs someone to change something first.
    fn class(&self) -> Class {
        match self {
            ConnectionError::Status { status, .. } => Class::of_http_status(*status),
            ConnectionError::Timeout { .. }
            | ConnectionError::Connect { .. }
            | ConnectionError::Transport { .. }
            | ConnectionError::RunDeadline { .. } => Class::Transient,
            ConnectionError::OAuth { class, .. } | ConnectionError::Paging { class, .. } => *class,
            ConnectionError::NotAuthorized { .. }
            | ConnectionError::Authorize { .. }
            | ConnectionError::TokenStore { .. }
            | ConnectionError::TooManyPages { .. }
            | ConnectionError::Disabled { .. }
            | ConnectionError::ForeignOrigin { .. }
            | ConnectionError::OutcomeUnknown { .. }
            | ConnectionError::Invalid { .. } => Class::Permanent,
        }
    }
}

impl ConnectionError {
    /// The HTTP status, when the peer answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ConnectionError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// How long the peer asked us to wait before trying again, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ConnectionError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether the request certainly never reached the peer's application, so that even a
    /// non-idempotent call (POST, PATCH) can be sent again: the connection was refused, no
    /// token could be had, the run's deadline came before it was sent, or the peer said it
    /// did not process it: 429 (rate limited), 408 (it gave up waiting for the request) and
    /// 503 with `Retry-After` (a planned refusal: maintenance, overload).
    pub(crate) fn certainly_not_processed(&self) -> bool {
        match self {
            ConnectionError::Connect { .. } | ConnectionError::OAuth { .. } => true,
            ConnectionError::RunDeadline { sent, .. } => !sent,
            ConnectionError::Status { status, retry_after, .. } => {
                matches!(status, 408 | 429) || (*status == 503 && retry_after.is_some())
            }
            _ => false,
        }
    }

    /// Whether the request went out and nobody can say whether the peer carried it out: a
    /// timeout after sending, an exchange broken mid-way, the run's deadline after sending,
    /// or a 5xx answer that does not say the request was refused (a 502 or 504 from a proxy
    /// says nothing of what the application behind it did).
    pub(crate) fn outcome_unknown(&self) -> bool {
        match self {
            ConnectionError::Timeout { .. } | ConnectionError::Transport { .. } => true,
            ConnectionError::RunDeadline { sent, .. } => *sent,
            ConnectionError::Status { status, .. } => *status >= 500 && !self.certainly_not_processed(),
            _ => false,
        }
    }

    /// What happened to the request, without the connection, method and path (for
    /// [`ConnectionError::OutcomeUnknown`]).
    pub(crate) fn what_happened(&self) -> String {
        match self {
            ConnectionError::Timeout { timeout, .. } => {
                format!("no answer within {}", humantime::format_duration(*timeout))
            }
            ConnectionError::Transport { reason, .. } => format!("the exchange broke off: {reason}"),
            ConnectionError::RunDeadline { .. } => "the run's time limit ([limits] timeout_ms) cut it off".into(),
            ConnectionError::Status { status, body_excerpt, .. } if body_excerpt.is_empty() => {
                format!("it answered {status}")
            }
            ConnectionError::Status { status, body_excerpt, .. } => format!("it answered {status}: {body_excerpt}"),
            other => other.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16) -> ConnectionError {
        ConnectionError::Status {
            connection: "c".into(),
            method: "GET".into(),
            path: "/x".into(),
            status,
            body_excerpt: String::new(),
            retry_after: None,
        }
    }

    #[test]
    fn classifies_statuses() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(status(s).is_transient(), "{s}");
        }
        for s in [400, 401, 403, 404, 409, 422] {
            assert!(!status(s).is_transient(), "{s}");
        }
    }

    #[test]
    fn only_refusals_are_safe_to_resend_for_any_method() {
        assert!(status(429).certainly_not_processed());
        assert!(status(408).certainly_not_processed());
        assert!(!status(503).certainly_not_processed());
        let mut planned = status(503);
        if let ConnectionError::Status { retry_after, .. } = &mut planned {
            *retry_after = Some(Duration::from_secs(5));
        }
        assert!(planned.certainly_not_processed() && !planned.outcome_unknown());
        for s in [500, 502, 503, 504] {
            assert!(status(s).outcome_unknown(), "{s}");
        }
        for s in [400, 404, 409, 429] {
            assert!(!status(s).outcome_unknown(), "{s}");
        }
        let cut = |sent| ConnectionError::RunDeadline {
            connection: "c".into(),
            method: "POST".into(),
            path: "/x".into(),
            sent,
        };
        assert!(cut(false).certainly_not_processed() && !cut(false).outcome_unknown());
        assert!(cut(true).outcome_unknown() && !cut(true).certainly_not_processed());
        let refused = ConnectionError::Connect { connection: "c".into(), host: "h".into(), reason: "refused".into() };
        assert!(refused.certainly_not_processed() && refused.is_transient());
    }

    #[test]
    fn messages_name_the_way_out() {
        let e = ConnectionError::NotAuthorized { connection: "halo".into(), reason: None };
        assert_eq!(e.to_string(), "connection halo is not authorized: run `tripline connection authorize halo`");
        let e = ConnectionError::Timeout {
            connection: "c".into(),
            method: "GET".into(),
            path: "/users".into(),
            timeout: Duration::from_millis(1500),
        };
        assert_eq!(e.to_string(), "connection c: GET /users timed out after 1s 500ms");
        assert_eq!(status(503).to_string(), "connection c: GET /x answered 503");
    }
}
