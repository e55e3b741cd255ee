//! `[connections.NAME]` as written: the serde structs, and `build()`, which reports every
//! problem of a section and makes its [`Connection`].

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::Method;
use serde::Deserialize;
use toml::Spanned;
use url::Url;

use super::auth::Auth;
use super::oauth::TokenStore;
use super::politeness::{RateLimit, RetryPolicy};
use super::Connection;
use crate::de::duration;
use crate::diag::CheckCtx;
use crate::secret::SecretRef;

/// Used when `timeout` is not given.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Used when `max_pages` is not given.
pub const DEFAULT_MAX_PAGES: u32 = 1000;

/// `[connections.NAME]` as written.
///
/// ```toml
/// [connections.flex_hr]
/// base_url = "https://flexhr.example.com/api/"
/// timeout = "30s"
/// headers = { Accept = "application/json" }
/// auth = { type = "basic", username = "svc", password = "${FLEX_PASSWORD}" }
/// rate_limit = { requests = 10, per_seconds = 1 }
/// retry = { max_attempts = 3, base_delay = "500ms", max_delay = "30s" }
/// test = { method = "GET", path = "users?page=1&pageSize=1" }
/// max_pages = 1000
/// idempotency_header = "Idempotency-Key"
/// enabled = true
/// ```
///
/// `enabled = false` keeps a connection configured but out of use: `check` still validates
/// its settings but does not resolve its secrets (so an example connection whose
/// `${VARIABLE}` is not set yet does not fail `check` or startup), and every call on it fails
/// with [`ConnectionError::Disabled`](super::ConnectionError::Disabled), which says how to turn it on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    /// Every request path is relative to it.
    pub base_url: Spanned<String>,
    /// For one attempt of one request, body included (`"30s"`, `"500ms"` or seconds).
    #[serde(default = "default_timeout", deserialize_with = "duration::deserialize")]
    pub timeout: Duration,
    /// Sent with every request. A value with `${...}` is resolved like a secret and never
    /// logged; a plain value is sent as written.
    #[serde(default)]
    pub headers: BTreeMap<String, SecretRef>,
    /// How requests authenticate; none when absent.
    #[serde(default)]
    pub auth: Option<Spanned<AuthConfig>>,
    /// At most `requests` per `per_seconds`, bursts included.
    #[serde(default)]
    pub rate_limit: Option<Spanned<RateLimitConfig>>,
    /// Retries of transient failures.
    #[serde(default)]
    pub retry: Option<Spanned<RetryConfig>>,
    /// The request `tripline connection test NAME` makes.
    #[serde(default)]
    pub test: Option<Spanned<TestRequestConfig>>,
    /// The most pages `get_all` reads before it gives up with an error.
    #[serde(default)]
    pub max_pages: Option<Spanned<u32>>,
    /// The header the API reads an idempotency key from (`Idempotency-Key`, Stripe's and the
    /// IETF draft's name; `X-Request-Id` and others elsewhere). When set, each POST or PATCH
    /// carries a key that stays the same on every attempt of the run that sends it, so a
    /// request whose outcome is unknown (a timeout) is sent again; without it such a request
    /// fails the run for good instead (see [`ConnectionError::OutcomeUnknown`](super::ConnectionError::OutcomeUnknown)).
    #[serde(default)]
    pub idempotency_header: Option<Spanned<String>>,
    /// Whether the connection is in use (default true); see the type's docs.
    #[serde(default = "crate::de::default_true")]
    pub enabled: bool,
}

fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

/// `auth = { type = "...", ... }`: how a connection authenticates.
///
/// Written as one table tagged by `type`. It is read through a flat struct rather than
/// `#[serde(tag = "type")]` because serde buffers tagged enums, which loses the spans that
/// [`SecretRef`] (a `toml::Spanned`) needs: the flat struct keeps them and the conversion
/// still rejects settings that belong to another type.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawAuth")]
pub enum AuthConfig {
    /// A key sent as a header, a query parameter or a form field.
    ApiKey { name: String, value: SecretRef, location: ApiKeyIn },
    /// HTTP basic authentication.
    Basic { username: String, password: SecretRef },
    /// A fixed bearer token.
    Bearer { token: SecretRef },
    /// OAuth2 tokens obtained, refreshed and stored by the host.
    OAuth2(Box<OAuth2Config>),
}

/// Where an API key goes (`in = "header" | "query" | "form"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiKeyIn {
    Header,
    Query,
    Form,
}

/// `grant = "client_credentials" | "authorization_code"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OAuth2Grant {
    /// Machine to machine: the client id and secret obtain tokens.
    ClientCredentials,
    /// A person logs in once (`tripline connection authorize NAME`); the refresh token keeps
    /// the connection going.
    AuthorizationCode,
}

/// `client_auth = "basic" | "body"`: how the client id and secret reach the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// HTTP basic authentication, as RFC 6749 recommends.
    #[default]
    Basic,
    /// `client_id` and `client_secret` form fields (HaloITSM and others want this).
    Body,
}

/// The settings of `auth = { type = "oauth2", ... }`.
#[derive(Debug, Clone)]
pub struct OAuth2Config {
    pub grant: OAuth2Grant,
    pub token_url: Spanned<String>,
    /// The provider's login page (authorization code only).
    pub auth_url: Option<Spanned<String>>,
    pub client_id: String,
    /// Required for client credentials; optional for authorization code (public clients
    /// rely on PKCE alone).
    pub client_secret: Option<SecretRef>,
    pub scopes: Vec<String>,
    /// Where the provider sends the browser back (authorization code only). A loopback URL
    /// with port 0 means "any free port", which RFC 8252 requires providers to accept.
    pub redirect_url: Option<Spanned<String>>,
    /// The local address the callback listens on, when it differs from the redirect URL's
    /// host and port (behind a proxy).
    pub callback_listen: Option<Spanned<String>>,
    /// Extra parameters for the authorization and token requests (`tenant`, `resource`).
    pub extra_params: BTreeMap<String, String>,
    pub client_auth: ClientAuth,
    /// The word before the token in `Authorization` (default `Bearer`).
    pub header_prefix: String,
    /// A token is refreshed this long before it expires (default one minute).
    pub refresh_margin: Duration,
    /// The provider's token revocation endpoint (RFC 7009), called by `tripline connection
    /// revoke NAME`. Checked like `token_url`; it receives the client credentials too.
    pub revoke_url: Option<Spanned<String>>,
}

/// Used when `refresh_margin` is not given.
pub const DEFAULT_REFRESH_MARGIN: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum AuthKind {
    ApiKey,
    Basic,
    Bearer,
    #[serde(rename = "oauth2")]
    OAuth2,
}

impl AuthKind {
    fn as_str(self) -> &'static str {
        match self {
            AuthKind::ApiKey => "api_key",
            AuthKind::Basic => "basic",
            AuthKind::Bearer => "bearer",
            AuthKind::OAuth2 => "oauth2",
        }
    }

    fn settings(self) -> &'static [&'static str] {
        match self {
            AuthKind::ApiKey => &["name", "value", "in"],
            AuthKind::Basic => &["username", "password"],
            AuthKind::Bearer => &["token"],
            AuthKind::OAuth2 => &[
                "grant",
                "token_url",
                "auth_url",
                "client_id",
                "client_secret",
                "scopes",
                "redirect_url",
                "callback_listen",
                "extra_params",
                "client_auth",
                "header_prefix",
                "refresh_margin",
                "revoke_url",
            ],
        }
    }
}

/// Every setting of every auth type, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    #[serde(rename = "type")]
    kind: AuthKind,
    name: Option<String>,
    value: Option<SecretRef>,
    #[serde(rename = "in")]
    location: Option<ApiKeyIn>,
    username: Option<String>,
    password: Option<SecretRef>,
    token: Option<SecretRef>,
    grant: Option<OAuth2Grant>,
    token_url: Option<Spanned<String>>,
    auth_url: Option<Spanned<String>>,
    client_id: Option<String>,
    client_secret: Option<SecretRef>,
    scopes: Option<Vec<String>>,
    redirect_url: Option<Spanned<String>>,
    callback_listen: Option<Spanned<String>>,
    extra_params: Option<BTreeMap<String, String>>,
    client_auth: Option<ClientAuth>,
    header_prefix: Option<String>,
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    refresh_margin: Option<Duration>,
    revoke_url: Option<Spanned<String>>,
}

impl RawAuth {
    fn present(&self) -> Vec<&'static str> {
        let set = [
            ("name", self.name.is_some()),
            ("value", self.value.is_some()),
            ("in", self.location.is_some()),
            ("username", self.username.is_some()),
            ("password", self.password.is_some()),
            ("token", self.token.is_some()),
            ("grant", self.grant.is_some()),
            ("token_url", self.token_url.is_some()),
            ("auth_url", self.auth_url.is_some()),
            ("client_id", self.client_id.is_some()),
            ("client_secret", self.client_secret.is_some()),
            ("scopes", self.scopes.is_some()),
            ("redirect_url", self.redirect_url.is_some()),
            ("callback_listen", self.callback_listen.is_some()),
            ("extra_params", self.extra_params.is_some()),
            ("client_auth", self.client_auth.is_some()),
            ("header_prefix", self.header_prefix.is_some()),
            ("refresh_margin", self.refresh_margin.is_some()),
            ("revoke_url", self.revoke_url.is_some()),
        ];
        set.into_iter().filter(|(_, p)| *p).map(|(n, _)| n).collect()
    }
}

/// Why an `auth` table does not describe one auth type.
#[derive(Debug)]
pub struct AuthShapeError(String);

impl fmt::Display for AuthShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<RawAuth> for AuthConfig {
    type Error = AuthShapeError;

    fn try_from(raw: RawAuth) -> Result<Self, Self::Error> {
        let kind = raw.kind;
        let foreign: Vec<_> =
            raw.present().into_iter().filter(|s| !kind.settings().contains(s)).map(|s| format!("`{s}`")).collect();
        if !foreign.is_empty() {
            return Err(AuthShapeError(format!(
                "{} not a setting of auth type `{}` (it takes {})",
                foreign.join(", ") + if foreign.len() == 1 { " is" } else { " are" },
                kind.as_str(),
                kind.settings().join(", ")
            )));
        }
        let missing = |setting: &str| AuthShapeError(format!("auth type `{}` needs `{setting}`", kind.as_str()));
        Ok(match kind {
            AuthKind::ApiKey => AuthConfig::ApiKey {
                name: raw.name.ok_or_else(|| missing("name"))?,
                value: raw.value.ok_or_else(|| missing("value"))?,
                location: raw.location.unwrap_or(ApiKeyIn::Header),
            },
            AuthKind::Basic => AuthConfig::Basic {
                username: raw.username.ok_or_else(|| missing("username"))?,
                password: raw.password.ok_or_else(|| missing("password"))?,
            },
            AuthKind::Bearer => AuthConfig::Bearer { token: raw.token.ok_or_else(|| missing("token"))? },
            AuthKind::OAuth2 => AuthConfig::OAuth2(Box::new(OAuth2Config {
                grant: raw.grant.ok_or_else(|| missing("grant (\"client_credentials\" or \"authorization_code\")"))?,
                token_url: raw.token_url.ok_or_else(|| missing("token_url"))?,
                auth_url: raw.auth_url,
                client_id: raw.client_id.ok_or_else(|| missing("client_id"))?,
                client_secret: raw.client_secret,
                scopes: raw.scopes.unwrap_or_default(),
                redirect_url: raw.redirect_url,
                callback_listen: raw.callback_listen,
                extra_params: raw.extra_params.unwrap_or_default(),
                client_auth: raw.client_auth.unwrap_or_default(),
                header_prefix: raw.header_prefix.unwrap_or_else(|| "Bearer".into()),
                refresh_margin: raw.refresh_margin.unwrap_or(DEFAULT_REFRESH_MARGIN),
                revoke_url: raw.revoke_url,
            })),
        })
    }
}

/// `rate_limit = { requests = 10, per_seconds = 1 }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub requests: u32,
    #[serde(default = "one")]
    pub per_seconds: u64,
}

fn one() -> u64 {
    1
}

/// `retry = { max_attempts = 3, base_delay = "500ms", max_delay = "30s" }`.
///
/// Transient failures (429, 5xx, timeouts, unreachable peers) of idempotent methods are tried
/// again after `base_delay`, doubling each time, with jitter. A `Retry-After` answer is
/// honoured when it is at most `max_delay`; a longer one ends the call with the error (which
/// carries the delay) so the run is retried later instead of holding a worker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts in all, the first included; 1 turns retries off.
    pub max_attempts: u32,
    #[serde(deserialize_with = "duration::deserialize")]
    pub base_delay: Duration,
    #[serde(deserialize_with = "duration::deserialize")]
    pub max_delay: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self { max_attempts: 3, base_delay: Duration::from_millis(500), max_delay: Duration::from_secs(30) }
    }
}

/// `test = { method = "GET", path = "users?pageSize=1" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestRequestConfig {
    #[serde(default = "get")]
    pub method: String,
    #[serde(default)]
    pub path: String,
}

fn get() -> String {
    "GET".into()
}

impl ConnectionConfig {
    /// The runtime connection, secrets resolved; OAuth2 tokens are read from and written to
    /// `tokens`. `None` when the section has a problem, which is recorded (every problem, each
    /// at its place), or when a secret is not set and the check defers that to a use.
    ///
    /// A disabled connection is checked, but built without its secrets and headers: it only
    /// answers [`ConnectionError::Disabled`](super::ConnectionError::Disabled).
    pub fn build(
        &self,
        name: &str,
        span: Range<usize>,
        ctx: &mut CheckCtx,
        tokens: Arc<dyn TokenStore>,
    ) -> Option<Connection> {
        let errors = ctx.errors();
        let deferred = ctx.deferrals();
        if !is_snake_case(name) {
            ctx.error(
                span.clone(),
                format!(
                    "connection name `{name}` must be snake_case (lowercase letters, digits and \
                     underscores, starting with a letter), e.g. `{}`",
                    to_snake_case(name)
                ),
            );
        }
        let base_url = check_http_url(&self.base_url, "base_url", ctx);
        if self.timeout.is_zero() {
            ctx.error(span.clone(), "timeout must be more than zero");
        }
        let mut headers = HeaderMap::new();
        for (header, value) in &self.headers {
            let header_name = HeaderName::from_bytes(header.as_bytes());
            if header_name.is_err() {
                ctx.error(value.span(), format!("`{header}` is not a valid header name"));
            }
            let not_a_value =
                |ctx: &mut CheckCtx| ctx.error(value.span(), format!("header {header}: not a valid header value"));
            let header_value = if !value.is_template() {
                HeaderValue::from_str(value.0.get_ref()).map_err(|_| not_a_value(ctx)).ok()
            } else if self.enabled {
                value.check(ctx, &format!("header {header}")).and_then(|secret| {
                    let mut v = HeaderValue::from_str(secret.expose()).map_err(|_| not_a_value(ctx)).ok()?;
                    v.set_sensitive(true);
                    Some(v)
                })
            } else {
                value.check_syntax(ctx, &format!("header {header}"));
                None
            };
            if let (Ok(header_name), Some(mut header_value), true) = (header_name, header_value, self.enabled) {
                if header_name == reqwest::header::AUTHORIZATION {
                    header_value.set_sensitive(true);
                }
                headers.insert(header_name, header_value);
            }
        }
        let auth = match &self.auth {
            Some(auth) => Auth::build(name, auth.get_ref(), auth.span(), self.enabled, self.timeout, tokens, ctx),
            None => Some(Auth::None),
        };
        let rate_limit = self.rate_limit.as_ref().and_then(|limit| {
            let l = limit.get_ref();
            match (NonZeroU32::new(l.requests), l.per_seconds) {
                (Some(requests), per_seconds) if per_seconds > 0 => {
                    Some(RateLimit::new(requests, Duration::from_secs(per_seconds)))
                }
                _ => {
                    ctx.error(limit.span(), "rate_limit needs requests and per_seconds of at least 1");
                    None
                }
            }
        });
        let retry = self.retry.as_ref().map(|r| r.get_ref().clone()).unwrap_or_default();
        if let Some(r) = &self.retry {
            if retry.max_attempts == 0 {
                ctx.error(r.span(), "retry.max_attempts must be at least 1 (1 = no retries)");
            }
            if retry.base_delay > retry.max_delay {
                ctx.error(r.span(), "retry.base_delay must not exceed retry.max_delay");
            }
        }
        let test = self.test.as_ref().map(|t| t.get_ref().clone());
        let test_method = match (&self.test, &test) {
            (Some(spanned), Some(t)) => {
                let method = parse_method(&t.method);
                if method.is_none() {
                    ctx.error(spanned.span(), format!("test.method `{}` is not an HTTP method", t.method));
                }
                if Url::parse(&t.path).is_ok() {
                    ctx.error(spanned.span(), "test.path is relative to base_url, not a full URL");
                }
                method
            }
            _ => Some(Method::GET),
        };
        if let Some(max) = &self.max_pages {
            if *max.get_ref() == 0 {
                ctx.error(max.span(), "max_pages must be at least 1");
            }
        }
        let idempotency_header = match &self.idempotency_header {
            Some(header) => match idempotency_header(header.get_ref()) {
                Ok(h) => Some(h),
                Err(message) => {
                    ctx.error(header.span(), message);
                    None
                }
            },
            None => None,
        };
        if ctx.errors() > errors || ctx.deferrals() > deferred {
            return None;
        }
        let client = crate::tls::client_builder()
            .timeout(self.timeout)
            .connect_timeout(self.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("tripline/", env!("CARGO_PKG_VERSION")))
            .redirect(same_origin_redirects())
            .build()
            .map_err(|e| ctx.error(span, format!("cannot set up the HTTP client: {e}")))
            .ok()?;
        // Paths are relative to the base URL's folder: without the slash, `join` would drop
        // the base URL's last segment.
        let mut base_url = base_url?;
        if !base_url.path().ends_with('/') {
            base_url.set_path(&format!("{}/", base_url.path()));
        }
        Some(Connection {
            name: name.to_string(),
            enabled: self.enabled,
            base_url,
            client,
            timeout: self.timeout,
            headers,
            auth: auth?,
            auth_type: match self.auth.as_ref().map(|a| a.get_ref()) {
                None => "none",
                Some(AuthConfig::ApiKey { .. }) => "api_key",
                Some(AuthConfig::Basic { .. }) => "basic",
                Some(AuthConfig::Bearer { .. }) => "bearer",
                Some(AuthConfig::OAuth2(_)) => "oauth2",
            },
            rate_limit,
            retry: RetryPolicy::new(retry.max_attempts.max(1), retry.base_delay, retry.max_delay),
            test_method: test_method?,
            test_path: test.map(|t| t.path).unwrap_or_default(),
            max_pages: self.max_pages.as_ref().map(|m| *m.get_ref()).unwrap_or(DEFAULT_MAX_PAGES).max(1),
            idempotency_header,
        })
    }
}

/// `idempotency_header` as a header name; not one of the headers the host sets itself.
fn idempotency_header(name: &str) -> Result<HeaderName, String> {
    let header = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("idempotency_header: `{name}` is not a valid header name"))?;
    let reserved = [
        reqwest::header::AUTHORIZATION,
        reqwest::header::CONTENT_TYPE,
        reqwest::header::CONTENT_LENGTH,
        reqwest::header::HOST,
    ];
    if reserved.contains(&header) {
        return Err(format!("idempotency_header: `{name}` is set by tripline itself; name the header the API reads its idempotency key from, e.g. \"Idempotency-Key\""));
    }
    Ok(header)
}

/// Follows redirects only within the origin they started from: a header carrying an API key
/// must not be replayed to another host (reqwest strips `Authorization` across hosts, but
/// not custom headers).
fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let same = attempt.previous().first().is_some_and(|first| first.origin() == attempt.url().origin());
        if attempt.previous().len() > 5 || !same {
            attempt.stop()
        } else {
            attempt.follow()
        }
    })
}

pub(crate) fn parse_method(method: &str) -> Option<Method> {
    let upper = method.to_ascii_uppercase();
    match upper.as_str() {
        "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS" => Method::from_bytes(upper.as_bytes()).ok(),
        _ => None,
    }
}

/// `url` parsed, when it is an http or https URL without credentials or a fragment; a
/// problem naming `what` otherwise.
pub(super) fn check_http_url(url: &Spanned<String>, what: &str, ctx: &mut CheckCtx) -> Option<Url> {
    match Url::parse(url.get_ref()) {
        Err(e) => ctx.error(url.span(), format!("{what}: {e}")),
        Ok(u) if u.scheme() != "http" && u.scheme() != "https" => {
            ctx.error(url.span(), format!("{what} must be an http or https URL"))
        }
        Ok(u) if !u.username().is_empty() || u.password().is_some() => {
            ctx.error(url.span(), format!("{what} must not carry credentials; put them in `auth`"))
        }
        Ok(u) if u.fragment().is_some() => ctx.error(url.span(), format!("{what} must not have a #fragment")),
        Ok(u) => return Some(u),
    }
    None
}

/// Lowercase ASCII letters and digits in words joined by single underscores, starting with
/// a letter: `flex_hr`, `halo2`. ServiceDesk Plus requires the same of connection link names.
pub fn is_snake_case(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .split('_')
            .all(|word| !word.is_empty() && word.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()))
}

/// A snake_case suggestion for a name that is not (`FlexHR` -> `flex_hr`).
fn to_snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_alphanumeric() {
            let boundary = c.is_ascii_uppercase()
                && i > 0
                && (chars[i - 1].is_ascii_lowercase()
                    || chars[i - 1].is_ascii_digit()
                    || chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase()) && chars[i - 1].is_ascii_uppercase());
            if boundary && !out.ends_with('_') {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
    }
    let out = out.trim_end_matches('_').to_string();
    if out.starts_with(|c: char| c.is_ascii_lowercase()) {
        out
    } else {
        format!("c_{out}")
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::class::Classify;
    use crate::connection::ConnectionError;
    use crate::diag::Diagnostic;

    fn check(source: &str) -> Vec<Diagnostic> {
        #[derive(Deserialize)]
        struct File {
            connections: BTreeMap<String, Spanned<ConnectionConfig>>,
        }
        let file: File = toml::from_str(source).expect("parses");
        let path = Path::new("tripline.toml");
        let mut ctx = CheckCtx::new(path, source, Path::new("."));
        for (name, c) in &file.connections {
            c.get_ref().build(name, c.span(), &mut ctx, Arc::new(crate::connection::MemoryTokenStore::new()));
        }
        ctx.diags
    }

    fn parse_error(source: &str) -> String {
        toml::from_str::<BTreeMap<String, BTreeMap<String, ConnectionConfig>>>(source).expect_err("fails").to_string()
    }

    #[test]
    fn snake_case_names() {
        for good in ["flex_hr", "halo", "ninja_one2", "a1_b2"] {
            assert!(is_snake_case(good), "{good}");
        }
        for bad in ["FlexHR", "flex-hr", "_x", "x_", "a__b", "1abc", "", "flex hr", "fléx"] {
            assert!(!is_snake_case(bad), "{bad}");
        }
        assert_eq!(to_snake_case("FlexHR"), "flex_hr");
        assert_eq!(to_snake_case("HaloITSM"), "halo_itsm");
        assert_eq!(to_snake_case("flex-hr api"), "flex_hr_api");
        assert_eq!(to_snake_case("2go"), "c_2go");
    }

    #[test]
    fn a_full_section_is_valid() {
        let diags = check(
            r#"
[connections.flex_hr]
base_url = "https://flexhr.example.com/api"
timeout = "10s"
headers = { Accept = "application/json" }
auth = { type = "basic", username = "svc", password = "pw-literal" }
rate_limit = { requests = 10, per_seconds = 1 }
retry = { max_attempts = 4, base_delay = "200ms" }
test = { path = "users?pageSize=1" }
max_pages = 50
idempotency_header = "Idempotency-Key"

[connections.halo]
base_url = "https://halo.example.com/api/"
[connections.halo.auth]
type = "oauth2"
grant = "authorization_code"
token_url = "https://halo.example.com/auth/token?tenant=acme"
auth_url = "https://halo.example.com/auth/authorize?tenant=acme"
client_id = "abc"
client_secret = "def-literal"
scopes = ["all", "offline_access"]
redirect_url = "http://localhost:8976/callback"
client_auth = "body"
"#,
        );
        assert!(diags.is_empty(), "{diags:?}");
    }

    #[test]
    fn every_problem_is_reported_at_its_place() {
        let source = r#"
[connections.FlexHR]
base_url = "ftp://flexhr.example.com"
headers = { "bad header" = "x" }
auth = { type = "api_key", name = "X-Key", value = "${TRIPLINE_SURELY_UNSET_VAR}" }
rate_limit = { requests = 0 }
retry = { max_attempts = 0 }
test = { method = "FETCH", path = "https://elsewhere.example.com/" }
max_pages = 0
idempotency_header = "Idempotency Key"

[connections.cc]
base_url = "https://x.example.com"
idempotency_header = "Authorization"
auth = { type = "oauth2", grant = "client_credentials", token_url = "not a url", client_id = "id", redirect_url = "http://localhost:1/cb" }

[connections.code]
base_url = "https://user:pw@x.example.com"
auth = { type = "oauth2", grant = "authorization_code", token_url = "https://x.example.com/t", client_id = "id", redirect_url = "https://tripline.example.com/cb" }
"#;
        let messages: Vec<String> = check(source).iter().map(|d| d.to_string()).collect();
        let expect = [
            "tripline.toml:2:1: connection name `FlexHR` must be snake_case",
            "tripline.toml:3:12: base_url must be an http or https URL",
            "tripline.toml:4:28: `bad header` is not a valid header name",
            "tripline.toml:5:52: auth.value: environment variable TRIPLINE_SURELY_UNSET_VAR is not set",
            "tripline.toml:6:14: rate_limit needs requests and per_seconds of at least 1",
            "tripline.toml:7:9: retry.max_attempts must be at least 1",
            "tripline.toml:8:8: test.method `FETCH` is not an HTTP method",
            "tripline.toml:8:8: test.path is relative to base_url, not a full URL",
            "tripline.toml:9:13: max_pages must be at least 1",
            "tripline.toml:10:22: idempotency_header: `Idempotency Key` is not a valid header name",
            "tripline.toml:14:22: idempotency_header: `Authorization` is set by tripline itself",
            "tripline.toml:15:69: auth.token_url: relative URL without a base",
            "auth.redirect_url is only used by grant authorization_code",
            "grant client_credentials needs auth.client_secret",
            "tripline.toml:18:12: base_url must not carry credentials",
            "grant authorization_code needs auth.auth_url",
            "auth.redirect_url does not name a local address to listen on",
        ];
        for e in expect {
            assert!(messages.iter().any(|m| m.contains(e)), "missing {e:?} in {messages:#?}");
        }
        assert_eq!(messages.len(), expect.len(), "{messages:#?}");
    }

    #[test]
    fn a_disabled_connection_needs_no_secrets_but_is_otherwise_checked() {
        let source = r#"
[connections.flex_hr]
base_url = "https://flexhr.example.com/api/"
enabled = false
headers = { X-Tenant = "${TRIPLINE_SURELY_UNSET_TENANT}" }
auth = { type = "basic", username = "svc", password = "${TRIPLINE_SURELY_UNSET_VAR}" }

[connections.broken]
base_url = "ftp://x.example.com"
enabled = false
auth = { type = "bearer", token = "${UNTERMINATED" }
"#;
        let messages: Vec<String> = check(source).iter().map(|d| d.to_string()).collect();
        assert_eq!(messages.len(), 2, "{messages:#?}");
        assert!(messages[0].contains("tripline.toml:9:12: base_url must be an http or https URL"), "{messages:#?}");
        assert!(messages[1].contains("auth.token: unterminated `${`"), "{messages:#?}");

        // Enabled again, the unset variables are problems.
        let enabled = source.replace("enabled = false", "enabled = true");
        let messages: Vec<String> = check(&enabled).iter().map(|d| d.to_string()).collect();
        assert!(messages.iter().any(|m| m.contains("TRIPLINE_SURELY_UNSET_VAR is not set")), "{messages:#?}");
        assert!(messages.iter().any(|m| m.contains("TRIPLINE_SURELY_UNSET_TENANT is not set")), "{messages:#?}");
    }

    #[tokio::test]
    async fn a_disabled_connection_builds_without_secrets_and_refuses_every_call() {
        let c: ConnectionConfig = toml::from_str(
            "base_url = \"https://x.example.com/api\"\nenabled = false\n\
             auth = { type = \"basic\", username = \"svc\", password = \"${TRIPLINE_SURELY_UNSET_VAR}\" }\n",
        )
        .unwrap();
        let text = "";
        let mut ctx = CheckCtx::new(Path::new("tripline.toml"), text, Path::new("."));
        let tokens = Arc::new(crate::connection::MemoryTokenStore::new());
        let conn = c.build("flex_hr", 0..0, &mut ctx, tokens).expect("builds");
        assert!(!conn.is_enabled());
        let e = conn.get("users", Default::default()).await.unwrap_err();
        assert!(matches!(e, ConnectionError::Disabled { .. }) && !e.is_transient(), "{e:?}");
        assert_eq!(
            e.to_string(),
            "connection flex_hr is disabled (enabled = false in [connections.flex_hr]); \
             set enabled = true once its URL and secrets are in place"
        );
        assert!(matches!(conn.test_connection().await, Err(ConnectionError::Disabled { .. })));
        let paging = crate::connection::PagingOptions::new(crate::connection::Paging::LinkHeader);
        assert!(matches!(conn.get_all("users", paging).await, Err(ConnectionError::Disabled { .. })));
    }

    #[test]
    fn auth_tables_reject_settings_of_other_types() {
        let e = parse_error(
            "[c.x]\nbase_url = \"https://x\"\nauth = { type = \"bearer\", token = \"t\", password = \"p\" }\n",
        );
        assert!(e.contains("`password` is not a setting of auth type `bearer` (it takes token)"), "{e}");
        let e = parse_error("[c.x]\nbase_url = \"https://x\"\nauth = { type = \"basic\", username = \"u\" }\n");
        assert!(e.contains("auth type `basic` needs `password`"), "{e}");
        let e = parse_error("[c.x]\nbase_url = \"https://x\"\nauth = { type = \"basic_auth\" }\n");
        assert!(e.contains("unknown variant `basic_auth`"), "{e}");
        let e = parse_error("[c.x]\nbase_url = \"https://x\"\nauth = { type = \"api_key\", name = \"k\", value = \"v\", in = \"cookie\" }\n");
        assert!(e.contains("unknown variant `cookie`"), "{e}");
        let e = parse_error("[c.x]\nbase_url = \"https://x\"\ntimeout = \"soon\"\n");
        assert!(e.contains("invalid duration `soon`"), "{e}");
    }

    #[test]
    fn api_key_defaults_to_a_header_and_keeps_secret_spans() {
        let source =
            "[c.x]\nbase_url = \"https://x\"\nauth = { type = \"api_key\", name = \"k\", value = \"${NOPE_X}\" }\n";
        let file: BTreeMap<String, BTreeMap<String, ConnectionConfig>> = toml::from_str(source).unwrap();
        let auth = file["c"]["x"].auth.as_ref().unwrap().get_ref();
        match auth {
            AuthConfig::ApiKey { value, location, .. } => {
                assert_eq!(*location, ApiKeyIn::Header);
                assert_eq!(&source[value.span()], "\"${NOPE_X}\"");
            }
            other => panic!("{other:?}"),
        }
        // The template may be a literal password: Debug never shows it.
        assert!(!format!("{auth:?}").contains("NOPE_X"));
    }

    #[test]
    fn durations() {
        // Their parsing is `crate::de::duration`'s; a timeout takes whole seconds too.
        let c: ConnectionConfig = toml::from_str("base_url = \"https://x\"\ntimeout = 7\n").unwrap();
        assert_eq!(c.timeout, Duration::from_secs(7));
    }
}
