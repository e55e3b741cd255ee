//! HTTP connections to HR, ITSM and RMM APIs: `[connections.NAME]` and the runtime behind
//! `api.connection(name)`.
//!
//! A [`Connection`] is built from its [`ConnectionConfig`] once and shared (`Arc`) by every
//! run. It owns everything a script must not: authentication (`auth`: api_key in a header,
//! the query or a form, basic, bearer, OAuth2 with refresh and persistence in `oauth`),
//! politeness (`politeness`: a rate limit, retries with backoff and jitter, `Retry-After`)
//! and paging (`paging`: `get_all`). Scripts see a [`Response`] or a [`ConnectionError`],
//! and neither ever holds a secret.
//!
//! Paths are relative to `base_url` (a leading `/` included); a full URL is accepted only on
//! the same origin, so credentials never travel to another host. The origin is checked on the
//! URL as resolved, whatever produced it (a script's path, a next-page link from an answer),
//! and once more right before each attempt adds the credentials: URL parsers read `\\` as
//! `/` and drop leading spaces and control characters, so a "relative" path can name
//! another host.
//!
//! A request that is not idempotent (POST, PATCH) and whose outcome is unknown (a timeout
//! after it was sent, an exchange broken mid-way, most 5xx answers) is never sent again
//! silently: it fails for good with [`ConnectionError::OutcomeUnknown`], unless the
//! connection has an `idempotency_header`, in which case it is retried carrying the same key.

mod auth;
pub mod config;
mod error;
mod oauth;
mod paging;
mod politeness;

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use backon::Retryable as _;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::Method;
use serde_json::Value;
use tracing::{debug, warn};
use url::Url;

use crate::class::Classify;
use auth::{scrub, scrub_json, Auth, Credentials};
pub use config::{
    ApiKeyIn, AuthConfig, ClientAuth, ConnectionConfig, OAuth2Config, OAuth2Grant, RateLimitConfig, RetryConfig,
    TestRequestConfig,
};
pub use error::ConnectionError;
pub use oauth::{
    MemoryTokenStore, PendingAuthorization, StoreTokens, StoredToken, Token, TokenSlot, TokenStore, TokenStoreError,
};
pub use paging::{Paging, PagingOptions};
use politeness::{parse_retry_after, RateLimit, RetryPolicy};

/// The largest body read from an answer; a bigger one is an error rather than a daemon out
/// of memory.
pub const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// How long a body excerpt in an error is, in characters.
const EXCERPT_CHARS: usize = 300;

/// One configured HTTP peer, ready for requests from any task.
pub struct Connection {
    name: String,
    /// `enabled = false`: every call fails with [`ConnectionError::Disabled`].
    enabled: bool,
    base_url: Url,
    client: reqwest::Client,
    timeout: Duration,
    /// The configured default headers (secret ones marked sensitive).
    headers: HeaderMap,
    auth: Auth,
    /// The configured `auth.type` (`none` without one), also while the connection is
    /// disabled and its credentials are not built.
    auth_type: &'static str,
    rate_limit: Option<RateLimit>,
    retry: RetryPolicy,
    test_method: Method,
    test_path: String,
    max_pages: u32,
    /// The header that carries a request's idempotency key (`idempotency_header`), when the
    /// API supports one: then a POST or PATCH of unknown outcome may be sent again.
    idempotency_header: Option<HeaderName>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("name", &self.name)
            .field("enabled", &self.enabled)
            .field("base_url", &self.base_url.as_str())
            .field("auth", &self.auth.kind())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// What a request carries besides its method and path.
#[derive(Debug, Clone, Default)]
pub struct RequestOptions {
    /// Query parameters, appended to any in the path.
    pub query: Vec<(String, String)>,
    /// A JSON body.
    pub json: Option<Value>,
    /// A form body (`application/x-www-form-urlencoded`).
    pub form: Option<Vec<(String, String)>>,
    /// Extra headers; the connection's authentication still wins.
    pub headers: Vec<(String, String)>,
    /// Return non-2xx answers as responses instead of errors.
    pub allow_error_status: bool,
    /// No attempt, rate-limit wait or backoff goes past this instant (the run's deadline).
    pub deadline: Option<tokio::time::Instant>,
    /// The key sent in the connection's `idempotency_header`, the same on every attempt; a
    /// non-idempotent request with one may be sent again when its outcome is unknown.
    pub idempotency_key: Option<String>,
}

/// An answer, as a script sees it: `{status, headers, body}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    /// Lowercase names; repeated headers joined with `, `.
    pub headers: BTreeMap<String, String>,
    /// Parsed when the answer is JSON, else the text; `null` when empty.
    pub body: Value,
}

impl Response {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The start of the body on one line, for messages.
    pub fn body_excerpt(&self) -> String {
        let text = match &self.body {
            Value::Null => String::new(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        excerpt(&text)
    }
}

/// What `tripline connection test NAME` prints.
#[derive(Debug, Clone)]
pub struct TestOutcome {
    pub method: String,
    /// The URL path requested (no query string, which may hold a key).
    pub path: String,
    pub status: u16,
    pub elapsed: Duration,
    pub body_excerpt: String,
}

impl TestOutcome {
    /// Whether the peer answered 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// An attempt that did not produce a 2xx answer.
struct Failure {
    error: ConnectionError,
    /// The answer, when there was one (for `allow_error_status`).
    response: Option<Response>,
}

impl From<ConnectionError> for Failure {
    fn from(error: ConnectionError) -> Self {
        Failure { error, response: None }
    }
}

impl Connection {
    /// The connection's name in the configuration.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the connection is in use (`enabled`, true unless configured otherwise).
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The URL paths are relative to (always ending in `/`).
    pub fn base_url(&self) -> &Url {
        &self.base_url
    }

    /// The header that carries idempotency keys, when one is configured.
    pub fn idempotency_header(&self) -> Option<&HeaderName> {
        self.idempotency_header.as_ref()
    }

    /// The kind of authentication (`none`, `api_key`, `header`, `oauth2`), for the console:
    /// what is configured, never a credential.
    pub fn auth_kind(&self) -> &'static str {
        self.auth.kind()
    }

    /// The configured `auth.type`: `none`, `api_key`, `basic`, `bearer` or `oauth2`.
    pub fn auth_type(&self) -> &'static str {
        self.auth_type
    }

    /// Checks that `path` (with `query`) resolves to a URL on `base_url`'s origin, without
    /// sending anything: what a dry run does instead of a request it does not send.
    pub fn check_path(&self, path: &str, query: &[(String, String)]) -> Result<(), ConnectionError> {
        self.resolve(path, query).map(|_| ())
    }

    /// GET `path`.
    pub async fn get(&self, path: &str, options: RequestOptions) -> Result<Response, ConnectionError> {
        self.request(Method::GET, path, options).await
    }

    /// POST `path` (not retried unless the request certainly was not processed).
    pub async fn post(&self, path: &str, options: RequestOptions) -> Result<Response, ConnectionError> {
        self.request(Method::POST, path, options).await
    }

    /// PUT `path`.
    pub async fn put(&self, path: &str, options: RequestOptions) -> Result<Response, ConnectionError> {
        self.request(Method::PUT, path, options).await
    }

    /// PATCH `path` (not retried unless the request certainly was not processed).
    pub async fn patch(&self, path: &str, options: RequestOptions) -> Result<Response, ConnectionError> {
        self.request(Method::PATCH, path, options).await
    }

    /// DELETE `path`.
    pub async fn delete(&self, path: &str, options: RequestOptions) -> Result<Response, ConnectionError> {
        self.request(Method::DELETE, path, options).await
    }

    /// Sends one request, authenticated, rate-limited and retried as configured. A non-2xx
    /// answer is [`ConnectionError::Status`] unless `options.allow_error_status`.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        options: RequestOptions,
    ) -> Result<Response, ConnectionError> {
        let url = self.resolve(path, &options.query)?;
        self.send(method, url, &options).await
    }

    /// The configured test request (`test = {...}`, else GET on `base_url`), sent once, with
    /// no retries; any status is an outcome, only a failure to get an answer is an error.
    pub async fn test_connection(&self) -> Result<TestOutcome, ConnectionError> {
        let url = self.resolve(&self.test_path, &[])?;
        let options = RequestOptions { allow_error_status: true, ..RequestOptions::default() };
        let started = tokio::time::Instant::now();
        let response = self.send_attempts(self.test_method.clone(), url.clone(), &options, 1).await?;
        Ok(TestOutcome {
            method: self.test_method.to_string(),
            path: url.path().to_string(),
            status: response.status,
            elapsed: started.elapsed(),
            body_excerpt: response.body_excerpt(),
        })
    }

    /// Starts `tripline connection authorize NAME` for an OAuth2 authorization-code
    /// connection: binds the callback listener and builds the login URL.
    pub async fn begin_authorization(&self) -> Result<PendingAuthorization, ConnectionError> {
        self.ensure_enabled()?;
        match &self.auth {
            Auth::OAuth2(oauth) => oauth.begin_authorization().await,
            _ => Err(ConnectionError::Authorize {
                connection: self.name.clone(),
                message: "only OAuth2 connections are authorized".into(),
            }),
        }
    }

    /// `tripline connection revoke NAME`: the OAuth2 tokens revoked at the provider (when
    /// `revoke_url` is set) and deleted from the store. Afterwards an authorization-code
    /// connection is not authorized until `tripline connection authorize`, and a
    /// client-credentials one fetches a new token on its next call. Returns whether the
    /// provider was asked.
    pub async fn revoke(&self) -> Result<bool, ConnectionError> {
        match &self.auth {
            Auth::OAuth2(oauth) => oauth.revoke().await,
            _ => Err(ConnectionError::Authorize {
                connection: self.name.clone(),
                message: "only OAuth2 connections have tokens to revoke".into(),
            }),
        }
    }

    fn ensure_enabled(&self) -> Result<(), ConnectionError> {
        if self.enabled {
            Ok(())
        } else {
            Err(ConnectionError::Disabled { connection: self.name.clone() })
        }
    }

    /// `path` against `base_url`, with `query` appended; the one door every request (tests
    /// and pages included) goes through, so a disabled connection is refused here. The URL is
    /// checked after it is resolved: whatever the path looked like, only a URL on
    /// `base_url`'s origin comes out.
    pub(crate) fn resolve(&self, path: &str, query: &[(String, String)]) -> Result<Url, ConnectionError> {
        self.ensure_enabled()?;
        let invalid = |message: String| ConnectionError::Invalid { connection: self.name.clone(), message };
        let what = || format!("the path \"{}\"", excerpt_raw(path));
        let not_a_path = |e: url::ParseError| invalid(format!("`{}` is not a valid path: {e}", path.escape_debug()));
        let mut url = match Url::parse(path) {
            Ok(absolute) => absolute,
            Err(_) => {
                // First as a URL parser (and a reader) understands it, leading slashes
                // included: `//host/x` and its spellings name another host, and are refused
                // rather than quietly turned into a path on this one.
                self.check_origin(&self.base_url.join(path).map_err(not_a_path)?, what)?;
                self.base_url.join(path.trim_start_matches('/')).map_err(not_a_path)?
            }
        };
        self.check_origin(&url, what)?;
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
        }
        Ok(url)
    }

    /// Refuses a URL that is not on `base_url`'s origin (scheme, host and port), or that
    /// carries user info (which would replace the connection's own credentials). `what` names
    /// where the URL came from, for the message.
    pub(crate) fn check_origin(&self, url: &Url, what: impl FnOnce() -> String) -> Result<(), ConnectionError> {
        let same = url.origin() == self.base_url.origin();
        if same && url.username().is_empty() && url.password().is_none() {
            return Ok(());
        }
        let target = if !same {
            match url.origin() {
                origin @ url::Origin::Tuple(..) => origin.ascii_serialization(),
                url::Origin::Opaque(_) => format!("a {}: URL", url.scheme()),
            }
        } else {
            format!("{} with user info", url.origin().ascii_serialization())
        };
        Err(ConnectionError::ForeignOrigin {
            connection: self.name.clone(),
            what: what(),
            target,
            base: self.base_url.origin().ascii_serialization(),
        })
    }

    /// Sends to a resolved URL with the configured retries.
    pub(crate) async fn send(
        &self,
        method: Method,
        url: Url,
        options: &RequestOptions,
    ) -> Result<Response, ConnectionError> {
        self.send_attempts(method, url, options, self.retry.max_attempts).await
    }

    async fn send_attempts(
        &self,
        method: Method,
        url: Url,
        options: &RequestOptions,
        attempts: u32,
    ) -> Result<Response, ConnectionError> {
        let mut extra_headers = self.extra_headers(&options.headers)?;
        // Sending again is safe for idempotent methods; for the others only when the first
        // try certainly changed nothing, or when the peer can tell a repeat by its key.
        let unsafe_method = !is_idempotent(&method);
        let keyed = match (&self.idempotency_header, &options.idempotency_key) {
            (Some(name), Some(key)) if unsafe_method => {
                let value = HeaderValue::from_str(key)
                    .map_err(|_| self.invalid("the idempotency key is not a valid header value"))?;
                extra_headers.insert(name.clone(), value);
                true
            }
            _ => false,
        };
        let may_resend = |e: &ConnectionError| !unsafe_method || keyed || e.certainly_not_processed();
        let deadline = options.deadline;
        let attempt = || self.attempt(&method, &url, options, &extra_headers);
        let outcome = attempt
            .retry(self.retry.backoff(attempts))
            .sleep(tokio::time::sleep)
            .when(|f: &Failure| f.error.is_transient() && may_resend(&f.error))
            .adjust(|f: &Failure, next| {
                // A wait that would end past the run's deadline is not started: the run ends
                // with the error that made it wait, which says more than the deadline would.
                let delay = self.retry.next_delay(f.error.retry_after(), next)?;
                match deadline {
                    Some(d) if tokio::time::Instant::now() + delay >= d => None,
                    _ => Some(delay),
                }
            })
            .notify(|f: &Failure, delay| {
                warn!(
                    connection = %self.name,
                    method = %method,
                    path = url.path(),
                    error = %f.error,
                    delay_ms = delay.as_millis() as u64,
                    "Request failed; trying again."
                );
            })
            .await;
        match outcome {
            Ok(response) => Ok(response),
            Err(Failure { response: Some(response), .. }) if options.allow_error_status => Ok(response),
            Err(failure) if unsafe_method && !keyed && failure.error.outcome_unknown() => {
                Err(ConnectionError::OutcomeUnknown {
                    connection: self.name.clone(),
                    method: method.to_string(),
                    path: url.path().to_string(),
                    reason: failure.error.what_happened(),
                })
            }
            Err(failure) => Err(failure.error),
        }
    }

    /// One attempt: credentials, the request, and for OAuth2 one refresh and resend on 401.
    async fn attempt(
        &self,
        method: &Method,
        url: &Url,
        options: &RequestOptions,
        extra_headers: &HeaderMap,
    ) -> Result<Response, Failure> {
        // The last check before credentials are added, whatever built the URL.
        self.check_origin(url, || "the request URL".to_string())?;
        let credentials =
            self.before_deadline(method, url, options.deadline, self.auth.credentials(&self.name)).await??;
        let mut response = self.send_once(method, url, options, extra_headers, &credentials).await?;
        if response.status == 401 {
            if let Auth::OAuth2(oauth) = &self.auth {
                let token = self
                    .before_deadline(
                        method,
                        url,
                        options.deadline,
                        oauth.token_after_rejection(credentials.token.as_ref()),
                    )
                    .await??;
                let credentials = oauth.credentials(token)?;
                response = self.send_once(method, url, options, extra_headers, &credentials).await?;
            }
        }
        if response.is_success() {
            return Ok(response);
        }
        let retry_after = response.headers.get("retry-after").and_then(|v| parse_retry_after(v, SystemTime::now()));
        Err(Failure {
            error: ConnectionError::Status {
                connection: self.name.clone(),
                method: method.to_string(),
                path: url.path().to_string(),
                status: response.status,
                body_excerpt: response.body_excerpt(),
                retry_after,
            },
            response: Some(response),
        })
    }

    /// Waits for `work` that comes before the request is sent (a token, a rate-limit permit),
    /// at most until `deadline`; past it, the request was certainly not sent.
    async fn before_deadline<T>(
        &self,
        method: &Method,
        url: &Url,
        deadline: Option<tokio::time::Instant>,
        work: impl std::future::Future<Output = T>,
    ) -> Result<T, ConnectionError> {
        match deadline {
            None => Ok(work.await),
            Some(d) => tokio::time::timeout_at(d, work).await.map_err(|_| ConnectionError::RunDeadline {
                connection: self.name.clone(),
                method: method.to_string(),
                path: url.path().to_string(),
                sent: false,
            }),
        }
    }

    async fn send_once(
        &self,
        method: &Method,
        url: &Url,
        options: &RequestOptions,
        extra_headers: &HeaderMap,
        credentials: &Credentials,
    ) -> Result<Response, ConnectionError> {
        if let Some(limit) = &self.rate_limit {
            self.before_deadline(method, url, options.deadline, limit.until_ready()).await?;
        }
        // The attempt's time: the connection's timeout, or what is left of the run's.
        let (timeout, cut_by_deadline) = match options.deadline {
            Some(d) => {
                let left = d.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    return Err(ConnectionError::RunDeadline {
                        connection: self.name.clone(),
                        method: method.to_string(),
                        path: url.path().to_string(),
                        sent: false,
                    });
                }
                (left.min(self.timeout), left < self.timeout)
            }
            None => (self.timeout, false),
        };
        let mut target = url.clone();
        if let Some((name, value)) = &credentials.query {
            target.query_pairs_mut().append_pair(name, value);
        }
        let mut headers = self.headers.clone();
        for (name, value) in extra_headers {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &credentials.headers {
            headers.insert(name.clone(), value.clone());
        }
        let mut request = self.client.request(method.clone(), target).headers(headers).timeout(timeout);
        match (&options.json, &options.form, &credentials.form) {
            (Some(_), _, Some(_)) | (Some(_), Some(_), _) => {
                return Err(self.invalid("a request has either a JSON body or a form body (the API key goes in a form)"))
            }
            (Some(json), None, None) => request = request.json(json),
            (None, form, key) => {
                if form.is_some() || key.is_some() {
                    let mut pairs = form.clone().unwrap_or_default();
                    pairs.extend(key.clone());
                    request = request.form(&pairs);
                }
            }
        }
        let started = tokio::time::Instant::now();
        let cut = |e: ConnectionError| match e {
            ConnectionError::Timeout { connection, method, path, .. } if cut_by_deadline => {
                ConnectionError::RunDeadline { connection, method, path, sent: true }
            }
            other => other,
        };
        let answer = request.send().await.map_err(|e| cut(self.transport_error(method, url, e)))?;
        let response = self.read_response(method, url, answer, &credentials.sent).await.map_err(cut)?;
        debug!(
            connection = %self.name,
            method = %method,
            path = url.path(),
            status = response.status,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "Request answered."
        );
        Ok(response)
    }

    async fn read_response(
        &self,
        method: &Method,
        url: &Url,
        mut answer: reqwest::Response,
        sent: &[String],
    ) -> Result<Response, ConnectionError> {
        let status = answer.status().as_u16();
        let mut headers = BTreeMap::<String, String>::new();
        for (name, value) in answer.headers() {
            let value = scrub(&String::from_utf8_lossy(value.as_bytes()), sent);
            headers
                .entry(name.as_str().to_string())
                .and_modify(|v| {
                    v.push_str(", ");
                    v.push_str(&value);
                })
                .or_insert(value);
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = answer.chunk().await.map_err(|e| self.transport_error(method, url, e))? {
            if bytes.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(self.invalid(&format!(
                    "{method} {} answered more than {} MiB",
                    url.path(),
                    MAX_BODY_BYTES / (1024 * 1024)
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        let raw = String::from_utf8_lossy(&bytes);
        let is_json = headers
            .get("content-type")
            .map(|t| t.to_ascii_lowercase())
            .map(|t| t.contains("/json") || t.contains("+json"));
        // Scrubbed after parsing: parsing decodes escapes (`\/`, `\u0042`) that would hide
        // an echoed credential from a scrub of the bytes.
        let body = if raw.trim().is_empty() {
            Value::Null
        } else if is_json != Some(false) {
            // JSON when it says so, or when it does not say and parses.
            match serde_json::from_str(&raw) {
                Ok(parsed) => scrub_json(parsed, sent),
                Err(_) => Value::String(scrub(&raw, sent)),
            }
        } else {
            Value::String(scrub(&raw, sent))
        };
        Ok(Response { status, headers, body })
    }

    fn extra_headers(&self, headers: &[(String, String)]) -> Result<HeaderMap, ConnectionError> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| self.invalid(&format!("`{name}` is not a valid header name")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| self.invalid(&format!("header {name}: not a valid header value")))?;
            map.insert(name, value);
        }
        Ok(map)
    }

    fn invalid(&self, message: &str) -> ConnectionError {
        ConnectionError::Invalid { connection: self.name.clone(), message: message.to_string() }
    }

    /// Our error for a reqwest failure, without the URL (its query may hold a key).
    fn transport_error(&self, method: &Method, url: &Url, e: reqwest::Error) -> ConnectionError {
        let connection = self.name.clone();
        // A connect that timed out never sent anything: it is a failure to connect.
        if e.is_timeout() && !e.is_connect() {
            ConnectionError::Timeout {
                connection,
                method: method.to_string(),
                path: url.path().to_string(),
                timeout: self.timeout,
            }
        } else if e.is_connect() {
            ConnectionError::Connect {
                connection,
                host: url.host_str().unwrap_or_default().to_string(),
                reason: describe_reqwest(e),
            }
        } else if e.is_builder() {
            ConnectionError::Invalid { connection, message: describe_reqwest(e) }
        } else {
            ConnectionError::Transport {
                connection,
                method: method.to_string(),
                path: url.path().to_string(),
                reason: describe_reqwest(e),
            }
        }
    }
}

/// A reqwest error as text: its chain of causes, without the URL, scrubbed.
pub(crate) fn describe_reqwest(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    scrub(&parts.join(": "), &[])
}

/// Whether sending `method` twice has the effect of sending it once (RFC 9110 section 9.2.2).
pub fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE)
}

/// A script's path for a message: at most 100 characters, control characters escaped.
fn excerpt_raw(path: &str) -> String {
    let shown: String = path.chars().take(100).collect();
    let mut out = shown.escape_debug().to_string();
    if path.chars().count() > 100 {
        out.push('…');
    }
    out
}

/// At most [`EXCERPT_CHARS`] characters of `text`, whitespace runs folded to one space.
fn excerpt(text: &str) -> String {
    let folded = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match folded.char_indices().nth(EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}…", &folded[..cut]),
        None => folded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The script binding and the daemon spawn these on tokio's worker threads.
    #[allow(dead_code)]
    fn futures_can_move_between_threads(c: &Connection, pending: PendingAuthorization) {
        fn send<T: Send>(_: T) {}
        fn shared<T: Send + Sync>() {}
        shared::<Connection>();
        send(c.get("x", RequestOptions::default()));
        send(c.get_all("x", PagingOptions::new(Paging::LinkHeader)));
        send(c.test_connection());
        send(c.begin_authorization());
        send(pending.complete(Duration::from_secs(1)));
    }

    #[test]
    fn excerpts_are_short_single_lines() {
        assert_eq!(excerpt("a\n  b\tc"), "a b c");
        let long = "é".repeat(400);
        let e = excerpt(&long);
        assert_eq!(e.chars().count(), EXCERPT_CHARS + 1);
        assert!(e.ends_with('…'));
    }
}
