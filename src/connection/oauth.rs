//! OAuth2 for connections: tokens obtained with the `oauth2` crate, kept fresh, persisted,
//! and the authorization-code login behind `tripline connection authorize NAME`.
//!
//! One [`OAuth2`] per connection holds the current token behind an async mutex: a caller
//! that finds the token stale refreshes it while holding the lock, so N concurrent callers
//! cause one refresh and all use its result. A token is refreshed `refresh_margin` before it
//! expires (from `expires_in`) and once more when the API answers 401 to it. Every new token,
//! with a rotated refresh token, is written to the [`TokenStore`] before it is used.

use crate::class::{Class, Classify};
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use oauth2::basic::{BasicClient, BasicErrorResponse, BasicErrorResponseType, BasicTokenResponse};
use oauth2::{
    AsyncHttpClient, AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet,
    EndpointNotSet, EndpointSet, HttpRequest, HttpResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl,
    RefreshToken, RequestTokenError, Scope, TokenResponse, TokenUrl,
};
use reqwest::header::{HeaderValue, AUTHORIZATION};
use serde::{Deserialize, Serialize};
use tracing::{error, info};
use url::Url;

use super::auth::{scrub, Credentials};
use super::config::{check_http_url, ClientAuth, OAuth2Config, OAuth2Grant};
use super::ConnectionError;
use crate::diag::CheckCtx;
use crate::store::Store;

/// Where a connection's OAuth2 tokens survive restarts. The daemon implements it on its
/// key-value table; [`MemoryTokenStore`] serves tests and embedders without a store.
///
/// Calls are short and synchronous; they are made while the connection's token lock is
/// held, so a save completes before any request uses the token it saved.
pub trait TokenStore: Send + Sync {
    /// The token last saved for `connection`, if any.
    fn load(&self, connection: &str) -> Result<Option<StoredToken>, TokenStoreError>;
    /// Replaces the token of `connection`.
    fn save(&self, connection: &str, token: &StoredToken) -> Result<(), TokenStoreError>;
    /// Forgets the token of `connection` (`tripline connection revoke`); none is no error.
    fn delete(&self, connection: &str) -> Result<(), TokenStoreError>;
    /// Holds the connection's token for a refresh against every other process sharing the
    /// store, until the lock is dropped: one refresh at a time per connection across workers,
    /// so that a rotated refresh token is used once and saved once. A store of one process
    /// needs none (the connection's own mutex serves).
    fn lock(&self, _connection: &str) -> Result<crate::store::StoreLock, TokenStoreError> {
        Ok(crate::store::StoreLock::local())
    }
}

/// A [`TokenStore`] failure, as text.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TokenStoreError(pub String);

impl TokenStoreError {
    pub fn new(cause: impl fmt::Display) -> Self {
        Self(cause.to_string())
    }
}

/// Tokens kept in memory only.
#[derive(Default)]
pub struct MemoryTokenStore {
    tokens: Mutex<HashMap<String, StoredToken>>,
}

impl MemoryTokenStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl TokenStore for MemoryTokenStore {
    fn load(&self, connection: &str) -> Result<Option<StoredToken>, TokenStoreError> {
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        Ok(tokens.get(connection).cloned())
    }

    fn save(&self, connection: &str, token: &StoredToken) -> Result<(), TokenStoreError> {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.insert(connection.to_string(), token.clone());
        Ok(())
    }

    fn delete(&self, connection: &str) -> Result<(), TokenStoreError> {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner()).remove(connection);
        Ok(())
    }
}

/// OAuth2 tokens in the store's key-value table (namespace `oauth2`): what the runtime keeps
/// its connections' tokens in, so that they survive restarts.
pub struct StoreTokens(pub Arc<dyn Store>);

const TOKENS: &str = "oauth2";

impl TokenStore for StoreTokens {
    fn load(&self, connection: &str) -> Result<Option<StoredToken>, TokenStoreError> {
        match self.0.kv_get(TOKENS, connection).map_err(TokenStoreError::new)? {
            Some(serde_json::Value::String(text)) => StoredToken::from_json(&text).map(Some),
            Some(_) => Err(TokenStoreError::new("stored token is not text")),
            None => Ok(None),
        }
    }

    fn save(&self, connection: &str, token: &StoredToken) -> Result<(), TokenStoreError> {
        self.0.kv_set(TOKENS, connection, &serde_json::Value::String(token.to_json())).map_err(TokenStoreError::new)
    }

    fn delete(&self, connection: &str) -> Result<(), TokenStoreError> {
        self.0.kv_delete(TOKENS, connection).map_err(TokenStoreError::new)
    }

    fn lock(&self, connection: &str) -> Result<crate::store::StoreLock, TokenStoreError> {
        self.0.lock(&format!("{TOKENS}:{connection}")).map_err(TokenStoreError::new)
    }
}

/// The token store of a configuration's connections, bound once, later: the connections are
/// built with the configuration, before the store their tokens belong in is opened (its folder
/// is in the configuration). Until the runtime binds it ([`TokenSlot::bind`]), tokens stay in
/// memory; nothing uses a token before that in tripline itself.
#[derive(Default)]
pub struct TokenSlot {
    bound: std::sync::OnceLock<Arc<dyn TokenStore>>,
    memory: MemoryTokenStore,
}

impl TokenSlot {
    /// Sends every later load and save to `store`. A slot is bound once; a second binding is
    /// refused (it returns false) so that no connection loses the tokens it saved.
    pub fn bind(&self, store: Arc<dyn TokenStore>) -> bool {
        self.bound.set(store).is_ok()
    }

    fn store(&self) -> &dyn TokenStore {
        match self.bound.get() {
            Some(s) => s.as_ref(),
            None => &self.memory,
        }
    }
}

impl TokenStore for TokenSlot {
    fn load(&self, connection: &str) -> Result<Option<StoredToken>, TokenStoreError> {
        self.store().load(connection)
    }

    fn save(&self, connection: &str, token: &StoredToken) -> Result<(), TokenStoreError> {
        self.store().save(connection, token)
    }

    fn delete(&self, connection: &str) -> Result<(), TokenStoreError> {
        self.store().delete(connection)
    }

    fn lock(&self, connection: &str) -> Result<crate::store::StoreLock, TokenStoreError> {
        self.store().lock(connection)
    }
}

/// An OAuth2 token value. `Debug` and `Display` print `**REDACTED**`.
///
/// Unlike [`crate::secret::Secret`] it is not registered for global redaction: tokens rotate
/// every hour or so and the registry would only grow. Instead each response is scrubbed of
/// the token its request carried.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Arc<str>);

impl Token {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into().into())
    }

    /// The value, for the one place that builds the header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("**REDACTED**")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("**REDACTED**")
    }
}

/// A connection's tokens as persisted.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredToken {
    pub access_token: Token,
    pub refresh_token: Option<Token>,
    /// When the access token expires; `None` when the provider did not say (then it is used
    /// until a 401).
    pub expires_at: Option<DateTime<Utc>>,
}

/// The persisted form: tokens in clear, so only [`StoredToken::to_json`] writes it.
#[derive(Serialize, Deserialize)]
struct StoredTokenJson {
    access_token: String,
    refresh_token: Option<String>,
    expires_at: Option<DateTime<Utc>>,
}

impl StoredToken {
    /// The persisted form, JSON with the tokens in clear: for the token store only.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&StoredTokenJson {
            access_token: self.access_token.expose().to_string(),
            refresh_token: self.refresh_token.as_ref().map(|t| t.expose().to_string()),
            expires_at: self.expires_at,
        })
        .unwrap_or_default()
    }

    /// Reads what [`StoredToken::to_json`] wrote.
    pub fn from_json(text: &str) -> Result<StoredToken, TokenStoreError> {
        let j: StoredTokenJson =
            serde_json::from_str(text).map_err(|e| TokenStoreError(format!("stored token is not readable: {e}")))?;
        Ok(StoredToken {
            access_token: Token::new(j.access_token),
            refresh_token: j.refresh_token.map(Token::new),
            expires_at: j.expires_at,
        })
    }

    /// Whether the access token can still be used for `margin` from `now`.
    pub fn is_fresh(&self, now: DateTime<Utc>, margin: Duration) -> bool {
        let margin = chrono::Duration::from_std(margin).unwrap_or(chrono::Duration::MAX);
        self.expires_at.is_none_or(|at| now.checked_add_signed(margin).is_some_and(|t| t < at))
    }

    fn from_response(response: &BasicTokenResponse, previous_refresh: Option<&Token>) -> Self {
        let now = Utc::now();
        StoredToken {
            access_token: Token::new(response.access_token().secret().clone()),
            // A provider that does not rotate refresh tokens leaves the field out: keep ours.
            refresh_token: response
                .refresh_token()
                .map(|t| Token::new(t.secret().clone()))
                .or_else(|| previous_refresh.cloned()),
            expires_at: response
                .expires_in()
                .and_then(|d| chrono::Duration::from_std(d).ok().and_then(|d| now.checked_add_signed(d))),
        }
    }
}

type OAuthClient = BasicClient<EndpointMaybeSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

/// The OAuth2 side of one connection.
pub(crate) struct OAuth2 {
    connection: String,
    client: OAuthClient,
    http: TokenHttp,
    grant: OAuth2Grant,
    scopes: Vec<Scope>,
    extra_params: Vec<(String, String)>,
    header_prefix: String,
    refresh_margin: Duration,
    redirect_url: Option<Url>,
    callback_listen: Option<SocketAddr>,
    /// `revoke_url` and what the revocation request authenticates with.
    revocation: Option<Revocation>,
    store: Arc<dyn TokenStore>,
    state: tokio::sync::Mutex<TokenState>,
}

/// Where and how `tripline connection revoke` asks the provider (RFC 7009). Sent by hand
/// rather than by the `oauth2` crate, which refuses any `http://` endpoint: `revoke_url`
/// follows `token_url`'s rules instead (a local provider in a lab or a test speaks plain HTTP),
/// with the same client authentication and the same client that follows no redirect.
struct Revocation {
    url: Url,
    client_id: String,
    client_secret: Option<crate::secret::Secret>,
    client_auth: ClientAuth,
}

#[derive(Default)]
struct TokenState {
    loaded: bool,
    token: Option<StoredToken>,
}

impl OAuth2 {
    /// The OAuth2 client of `auth = { type = "oauth2", ... }`, its tokens kept in `store`.
    /// `None` when the settings have a problem, which is recorded at its place (every one), and
    /// for a connection that is not `enabled`, whose settings are checked and its secret only
    /// for how it is written.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        connection: &str,
        config: &OAuth2Config,
        span: Range<usize>,
        enabled: bool,
        timeout: Duration,
        store: Arc<dyn TokenStore>,
        ctx: &mut CheckCtx,
    ) -> Option<OAuth2> {
        let errors = ctx.errors();
        let token_url = check_http_url(&config.token_url, "auth.token_url", ctx);
        let revoke_url = config.revoke_url.as_ref().map(|u| check_http_url(u, "auth.revoke_url", ctx));
        if config.client_id.is_empty() {
            ctx.error(span.clone(), "auth.client_id is empty");
        }
        let client_secret = match &config.client_secret {
            Some(secret) if enabled => Some(secret.check(ctx, "auth.client_secret")),
            Some(secret) => {
                secret.check_syntax(ctx, "auth.client_secret");
                None
            }
            None => None,
        };
        let (mut auth_url, mut redirect_url, mut callback_listen) = (None, None, None);
        match config.grant {
            OAuth2Grant::ClientCredentials => {
                if config.client_secret.is_none() {
                    ctx.error(span.clone(), "grant client_credentials needs auth.client_secret");
                }
                for (setting, given) in [
                    ("auth_url", config.auth_url.is_some()),
                    ("redirect_url", config.redirect_url.is_some()),
                    ("callback_listen", config.callback_listen.is_some()),
                ] {
                    if given {
                        ctx.error(span.clone(), format!("auth.{setting} is only used by grant authorization_code"));
                    }
                }
            }
            OAuth2Grant::AuthorizationCode => {
                match &config.auth_url {
                    Some(url) => auth_url = check_http_url(url, "auth.auth_url", ctx),
                    None => ctx.error(span.clone(), "grant authorization_code needs auth.auth_url"),
                }
                match &config.redirect_url {
                    Some(url) => redirect_url = check_http_url(url, "auth.redirect_url", ctx),
                    None => ctx.error(span.clone(), "grant authorization_code needs auth.redirect_url"),
                }
                match &config.callback_listen {
                    Some(listen) => match listen.get_ref().parse::<SocketAddr>() {
                        Ok(addr) => callback_listen = Some(addr),
                        Err(_) => {
                            ctx.error(listen.span(), "auth.callback_listen must be an address like 127.0.0.1:8976")
                        }
                    },
                    None => {
                        if let Some(url) = &redirect_url {
                            if listen_address(url).is_none() {
                                ctx.error(
                                    config.redirect_url.as_ref().map(|u| u.span()).unwrap_or(span.clone()),
                                    "auth.redirect_url does not name a local address to listen on; \
                                     set auth.callback_listen (e.g. \"127.0.0.1:8976\")",
                                );
                            }
                        }
                    }
                }
            }
        }
        if !enabled || ctx.errors() > errors {
            return None;
        }
        // A secret that is not set here waits for a use: the connection is left out.
        let client_secret = client_secret.map(|s| s.ok_or(())).transpose().ok()?;
        let mut client = BasicClient::new(ClientId::new(config.client_id.clone()))
            .set_token_uri(TokenUrl::from_url(token_url?))
            .set_auth_uri_option(auth_url.map(AuthUrl::from_url))
            .set_auth_type(match config.client_auth {
                ClientAuth::Basic => AuthType::BasicAuth,
                ClientAuth::Body => AuthType::RequestBody,
            });
        if let Some(secret) = &client_secret {
            client = client.set_client_secret(ClientSecret::new(secret.expose().to_string()));
        }
        let revocation = revoke_url.flatten().map(|url| Revocation {
            url,
            client_id: config.client_id.clone(),
            client_secret: client_secret.clone(),
            client_auth: config.client_auth,
        });
        // Token endpoints never redirect in a way we should follow (the oauth2 crate's advice
        // against SSRF); the timeout is the connection's.
        let http = crate::tls::client_builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .build()
            .map_err(|e| ctx.error(span, format!("cannot set up the HTTP client: {e}")))
            .ok()?;
        Some(OAuth2 {
            connection: connection.to_string(),
            client,
            http: TokenHttp(http),
            grant: config.grant,
            scopes: config.scopes.iter().cloned().map(Scope::new).collect(),
            extra_params: config.extra_params.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            header_prefix: config.header_prefix.clone(),
            refresh_margin: config.refresh_margin,
            redirect_url,
            callback_listen,
            revocation,
            store,
            state: tokio::sync::Mutex::new(TokenState::default()),
        })
    }

    /// The `Authorization` header for `token`.
    pub fn credentials(&self, token: Token) -> Result<Credentials, ConnectionError> {
        let value = format!("{} {}", self.header_prefix, token.expose());
        let mut header = HeaderValue::from_str(&value).map_err(|_| ConnectionError::OAuth {
            connection: self.connection.clone(),
            message: "the provider issued a token that cannot be sent in a header".into(),
            class: Class::Permanent,
        })?;
        header.set_sensitive(true);
        Ok(Credentials {
            headers: vec![(AUTHORIZATION, header)],
            sent: vec![token.expose().to_string()],
            token: Some(token),
            ..Credentials::default()
        })
    }

    /// A token that is fresh for at least the refresh margin, refreshing it if needed.
    pub async fn access_token(&self) -> Result<Token, ConnectionError> {
        let mut state = self.state.lock().await;
        let fresh = |state: &TokenState| {
            state.token.as_ref().filter(|t| t.is_fresh(Utc::now(), self.refresh_margin)).map(|t| t.access_token.clone())
        };
        self.load_once(&mut state)?;
        if let Some(token) = fresh(&state) {
            return Ok(token);
        }
        // Another worker may be refreshing it: wait for it, then read what it saved.
        let _held = self.hold().await?;
        self.load_once(&mut state)?;
        if let Some(token) = fresh(&state) {
            return Ok(token);
        }
        self.renew(&mut state).await
    }

    /// The connection's token held against other workers for a refresh (see
    /// [`TokenStore::lock`]).
    async fn hold(&self) -> Result<crate::store::StoreLock, ConnectionError> {
        let (store, connection) = (self.store.clone(), self.connection.clone());
        let held = tokio::task::spawn_blocking(move || store.lock(&connection)).await;
        let error = |message: String| ConnectionError::TokenStore { connection: self.connection.clone(), message };
        match held {
            Ok(Ok(lock)) => Ok(lock),
            Ok(Err(e)) => Err(error(e.to_string())),
            Err(e) => Err(error(format!("the token lock's task stopped: {e}"))),
        }
    }

    /// After the API answered 401 to `rejected`: a newer token if another caller already
    /// replaced it, else a refreshed one. The caller retries its request once with it.
    pub async fn token_after_rejection(&self, rejected: Option<&Token>) -> Result<Token, ConnectionError> {
        let mut state = self.state.lock().await;
        let replaced = |state: &TokenState| match (&state.token, rejected) {
            (Some(current), Some(rejected)) if current.access_token != *rejected => Some(current.access_token.clone()),
            _ => None,
        };
        self.load_once(&mut state)?;
        if let Some(token) = replaced(&state) {
            return Ok(token);
        }
        let _held = self.hold().await?;
        self.load_once(&mut state)?;
        if let Some(token) = replaced(&state) {
            return Ok(token);
        }
        info!(connection = %self.connection, "Access token refused (401); refreshing it.");
        self.renew(&mut state).await
    }

    /// Reads the stored token again before each use: another process (`tripline connection
    /// authorize`, `tripline connection revoke`, a daemon that refreshed it) may have replaced
    /// or deleted it, and a revoked token must stop being used at once. A point read of the
    /// store, small beside the request it precedes.
    fn load_once(&self, state: &mut TokenState) -> Result<(), ConnectionError> {
        state.token = self
            .store
            .load(&self.connection)
            .map_err(|e| ConnectionError::TokenStore { connection: self.connection.clone(), message: e.to_string() })?;
        state.loaded = true;
        Ok(())
    }

    /// `tripline connection revoke`: asks the provider to revoke the stored tokens (RFC 7009,
    /// when `revoke_url` is set: the refresh token, then the access token, each with the
    /// client's credentials, no redirect followed) and deletes them from the store. The
    /// tokens are deleted whatever the provider answers, so that tripline stops using them;
    /// the provider's failure is the error. Returns whether the provider was asked.
    pub async fn revoke(&self) -> Result<bool, ConnectionError> {
        let mut state = self.state.lock().await;
        let stored = self.store.load(&self.connection).map_err(|e| self.store_error(e))?;
        let mut asked = false;
        let mut failure = None;
        if let (Some(token), Some(revocation)) = (&stored, &self.revocation) {
            let mut tokens = Vec::new();
            if let Some(refresh) = &token.refresh_token {
                tokens.push((refresh, "refresh_token"));
            }
            tokens.push((&token.access_token, "access_token"));
            for (t, hint) in tokens {
                asked = true;
                if let Err(e) = self.revoke_one(revocation, t, hint).await {
                    failure = Some(e);
                    break;
                }
            }
        }
        self.store.delete(&self.connection).map_err(|e| self.store_error(e))?;
        state.token = None;
        state.loaded = false;
        info!(connection = %self.connection, provider_asked = asked, "OAuth2 tokens revoked and deleted.");
        match failure {
            Some(e) => Err(e),
            None => Ok(asked),
        }
    }

    fn store_error(&self, e: TokenStoreError) -> ConnectionError {
        ConnectionError::TokenStore { connection: self.connection.clone(), message: e.to_string() }
    }

    fn revoke_error_text(&self, message: String, class: Class) -> ConnectionError {
        ConnectionError::OAuth {
            connection: self.connection.clone(),
            message: format!(
                "the revocation endpoint refused: {message}; the tokens were deleted here, revoke them at the provider \
                 as well"
            ),
            class,
        }
    }

    /// One revocation request: `token` and `token_type_hint` as a form, the client's
    /// credentials as the token endpoint gets them (RFC 6749 2.3.1: basic auth of the
    /// form-encoded id and secret, or form fields). Success is 200 (RFC 7009 2.2: also for a
    /// token the provider no longer knows). Bodies are never quoted: they may echo the token.
    async fn revoke_one(&self, r: &Revocation, token: &Token, hint: &str) -> Result<(), ConnectionError> {
        let mut fields = vec![("token", token.expose().to_string()), ("token_type_hint", hint.to_string())];
        let mut request = self.http.0.post(r.url.clone());
        match (r.client_auth, &r.client_secret) {
            (ClientAuth::Basic, Some(secret)) => {
                let enc = |v: &str| url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
                request = request.basic_auth(enc(&r.client_id), Some(enc(secret.expose())));
            }
            (ClientAuth::Body, Some(secret)) => {
                fields.push(("client_id", r.client_id.clone()));
                fields.push(("client_secret", secret.expose().to_string()));
            }
            (_, None) => fields.push(("client_id", r.client_id.clone())),
        }
        let response = request
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&fields)
            .send()
            .await
            .map_err(|e| self.revoke_error_text(super::describe_reqwest(e), Class::Transient))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let class = match status.as_u16() {
            429 | 500..=599 => Class::Transient,
            _ => Class::Permanent,
        };
        let what = match status.is_redirection() {
            true => format!("it answered {status} (a redirect is never followed)"),
            false => {
                // The OAuth2 error code only (`unsupported_token_type`, ...), never the body.
                let mut response = response;
                let mut bytes = Vec::new();
                // An error answer is a few bytes: more than 16 KiB is not read on.
                while let Ok(Some(chunk)) = response.chunk().await {
                    if bytes.len() + chunk.len() > 16 * 1024 {
                        bytes.clear();
                        break;
                    }
                    bytes.extend_from_slice(&chunk);
                }
                let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
                // RFC 6749's codes are short words; anything else (a token echoed back) is
                // not shown.
                let code = body
                    .get("error")
                    .and_then(|e| e.as_str())
                    .filter(|c| c.len() <= 64 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)));
                match code {
                    Some(code) => format!("it answered {status} ({})", scrub(code, &[])),
                    None => format!("it answered {status}"),
                }
            }
        };
        Err(self.revoke_error_text(what, class))
    }

    /// Obtains a new token (refresh grant, else client credentials), saves it, keeps it.
    async fn renew(&self, state: &mut TokenState) -> Result<Token, ConnectionError> {
        let refresh = state.token.as_ref().and_then(|t| t.refresh_token.clone());
        let token = match (&refresh, self.grant) {
            (Some(refresh), grant) => match self.refresh(refresh).await {
                Ok(t) => t,
                // A refused refresh token is no dead end when the client can ask anew.
                Err(e) if grant == OAuth2Grant::ClientCredentials && !e.is_transient() => {
                    info!(connection = %self.connection, error = %e, "Refresh token refused; requesting a new token.");
                    self.client_credentials().await?
                }
                Err(e) if grant == OAuth2Grant::AuthorizationCode && !e.is_transient() => {
                    return Err(ConnectionError::NotAuthorized {
                        connection: self.connection.clone(),
                        reason: Some(format!("the refresh token was refused: {e}")),
                    });
                }
                Err(e) => return Err(e),
            },
            (None, OAuth2Grant::ClientCredentials) => self.client_credentials().await?,
            (None, OAuth2Grant::AuthorizationCode) => {
                return Err(ConnectionError::NotAuthorized { connection: self.connection.clone(), reason: None })
            }
        };
        self.persist(&token);
        let access = token.access_token.clone();
        state.token = Some(token);
        Ok(access)
    }

    /// Writes the token before anyone uses it: a rotated refresh token is the only way back
    /// in after a restart. A failing store is logged loudly but does not fail the call, since
    /// the token in memory still works.
    fn persist(&self, token: &StoredToken) {
        if let Err(e) = self.store.save(&self.connection, token) {
            error!(connection = %self.connection, error = %e, "Cannot save the OAuth2 token; it will be lost on restart.");
        }
    }

    async fn refresh(&self, refresh: &Token) -> Result<StoredToken, ConnectionError> {
        let refresh_token = RefreshToken::new(refresh.expose().to_string());
        let mut request = self.client.exchange_refresh_token(&refresh_token).add_scopes(self.scopes.clone());
        for (k, v) in &self.extra_params {
            request = request.add_extra_param(k.as_str(), v.as_str());
        }
        let response = request.request_async(&self.http).await.map_err(|e| self.token_error(e))?;
        info!(connection = %self.connection, rotated = response.refresh_token().is_some(), "Access token refreshed.");
        Ok(StoredToken::from_response(&response, Some(refresh)))
    }

    async fn client_credentials(&self) -> Result<StoredToken, ConnectionError> {
        let mut request = self.client.exchange_client_credentials().add_scopes(self.scopes.clone());
        for (k, v) in &self.extra_params {
            request = request.add_extra_param(k.as_str(), v.as_str());
        }
        let response = request.request_async(&self.http).await.map_err(|e| self.token_error(e))?;
        info!(connection = %self.connection, "Access token obtained with client credentials.");
        Ok(StoredToken::from_response(&response, None))
    }

    /// Our error for a failed token request. Bodies are never quoted: a token endpoint's
    /// answer may hold a token.
    fn token_error(&self, e: RequestTokenError<TokenHttpError, BasicErrorResponse>) -> ConnectionError {
        let (message, class) = match e {
            RequestTokenError::ServerResponse(r) => {
                let unavailable = matches!(r.error(), BasicErrorResponseType::Extension(code)
                    if code == "temporarily_unavailable");
                (scrub(&r.to_string(), &[]), if unavailable { Class::Transient } else { Class::Permanent })
            }
            RequestTokenError::Request(TokenHttpError::Status(status)) => {
                (format!("the token endpoint answered {status}"), Class::Transient)
            }
            RequestTokenError::Request(TokenHttpError::Transport(reason)) => (reason, Class::Transient),
            RequestTokenError::Parse(_, _) => {
                ("the token endpoint's answer is not an OAuth2 token response".to_string(), Class::Permanent)
            }
            RequestTokenError::Other(message) => (scrub(&message, &[]), Class::Permanent),
        };
        ConnectionError::OAuth { connection: self.connection.clone(), message, class }
    }

    /// Starts `tripline connection authorize`: listens for the callback and builds the URL
    /// the person opens (with PKCE and a random state).
    pub async fn begin_authorization(self: &Arc<Self>) -> Result<PendingAuthorization, ConnectionError> {
        let fail = |message: String| ConnectionError::Authorize { connection: self.connection.clone(), message };
        if self.grant != OAuth2Grant::AuthorizationCode {
            return Err(fail("only connections with grant authorization_code are authorized by a person".into()));
        }
        let mut redirect = self.redirect_url.clone().ok_or_else(|| fail("auth.redirect_url is not set".into()))?;
        let listen = self
            .callback_listen
            .or_else(|| listen_address(&redirect))
            .ok_or_else(|| fail("set auth.callback_listen to a local address".into()))?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| fail(format!("cannot listen for the callback on {listen}: {e}")))?;
        let bound = listener.local_addr().map_err(|e| fail(format!("cannot listen for the callback: {e}")))?;
        if redirect.port() == Some(0) {
            // "Any free port" (RFC 8252 section 7.3): tell the provider the one we got.
            let _ = redirect.set_port(Some(bound.port()));
        }
        let redirect = RedirectUrl::from_url(redirect);
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = self
            .client
            .authorize_url(CsrfToken::new_random)
            .map_err(|e| fail(format!("auth.auth_url: {e}")))?
            .add_scopes(self.scopes.clone())
            .set_pkce_challenge(challenge)
            .set_redirect_uri(Cow::Borrowed(&redirect));
        for (k, v) in &self.extra_params {
            request = request.add_extra_param(k.as_str(), v.as_str());
        }
        let (url, csrf) = request.url();
        Ok(PendingAuthorization {
            oauth: Arc::clone(self),
            url,
            callback_path: redirect.url().path().to_string(),
            redirect,
            listener,
            csrf,
            verifier,
        })
    }

    async fn exchange_code(
        &self,
        code: String,
        verifier: PkceCodeVerifier,
        redirect: RedirectUrl,
    ) -> Result<(), ConnectionError> {
        let mut request = self
            .client
            .exchange_code(AuthorizationCode::new(code))
            .set_pkce_verifier(verifier)
            .set_redirect_uri(Cow::Owned(redirect));
        for (k, v) in &self.extra_params {
            request = request.add_extra_param(k.as_str(), v.as_str());
        }
        let response = request.request_async(&self.http).await.map_err(|e| self.token_error(e))?;
        let token = StoredToken::from_response(&response, None);
        if token.refresh_token.is_none() {
            info!(connection = %self.connection, "The provider issued no refresh token; the connection works until the access token expires (ask for offline access in scopes).");
        }
        let mut state = self.state.lock().await;
        self.store
            .save(&self.connection, &token)
            .map_err(|e| ConnectionError::TokenStore { connection: self.connection.clone(), message: e.to_string() })?;
        state.loaded = true;
        state.token = Some(token);
        info!(connection = %self.connection, "Connection authorized; tokens stored.");
        Ok(())
    }
}

/// The address to listen on for a redirect URL on this machine: an IP address as written,
/// `localhost` as 127.0.0.1; `None` for other host names.
pub(crate) fn listen_address(redirect: &Url) -> Option<SocketAddr> {
    let port = redirect.port_or_known_default()?;
    let ip = match redirect.host()? {
        url::Host::Ipv4(ip) => IpAddr::V4(ip),
        url::Host::Ipv6(ip) => IpAddr::V6(ip),
        url::Host::Domain("localhost") => IpAddr::V4(Ipv4Addr::LOCALHOST),
        url::Host::Domain(_) => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// An authorization in progress: show [`url`](Self::url) to the person, then
/// [`complete`](Self::complete) waits for the provider's callback.
pub struct PendingAuthorization {
    oauth: Arc<OAuth2>,
    url: Url,
    redirect: RedirectUrl,
    callback_path: String,
    listener: tokio::net::TcpListener,
    csrf: CsrfToken,
    verifier: PkceCodeVerifier,
}

impl fmt::Debug for PendingAuthorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingAuthorization")
            .field("connection", &self.oauth.connection)
            .field("redirect", &self.redirect.as_str())
            .finish_non_exhaustive()
    }
}

/// What the callback handler passes on.
type CallbackOutcome = Result<String, String>;

#[derive(Clone)]
struct CallbackState {
    expected_state: Arc<str>,
    connection: Arc<str>,
    outcome: tokio::sync::mpsc::Sender<CallbackOutcome>,
}

impl PendingAuthorization {
    /// The provider's login page to open in a browser.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The redirect URL sent to the provider (with the actual port when configured as 0).
    pub fn redirect_url(&self) -> &str {
        self.redirect.as_str()
    }

    /// Serves the callback until the provider sends the person back with a code (or an
    /// error) or `wait` passes, then exchanges the code and stores the tokens. Callbacks with
    /// another state are answered 400 and ignored.
    pub async fn complete(self, wait: Duration) -> Result<(), ConnectionError> {
        let connection = self.oauth.connection.clone();
        let fail = |message: String| ConnectionError::Authorize { connection: connection.clone(), message };
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let state = CallbackState {
            expected_state: self.csrf.secret().as_str().into(),
            connection: connection.as_str().into(),
            outcome: tx,
        };
        let app = axum::Router::new().route(&self.callback_path, axum::routing::get(callback)).with_state(state);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(
            axum::serve(self.listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .into_future(),
        );
        let outcome = tokio::time::timeout(wait, rx.recv()).await;
        let _ = stop.send(());
        // The answer to the browser is written before the handler returns; a browser that
        // keeps its connection open must not hold us here.
        if tokio::time::timeout(Duration::from_secs(2), server).await.is_err() {
            info!(connection = %connection, "Callback server stopped with a connection still open.");
        }
        let code = match outcome {
            Err(_) => return Err(fail(format!("no callback within {}", humantime::format_duration(wait)))),
            Ok(None) => return Err(fail("the callback server stopped".into())),
            Ok(Some(Err(message))) => return Err(fail(message)),
            Ok(Some(Ok(code))) => code,
        };
        self.oauth.exchange_code(code, self.verifier, self.redirect).await
    }
}

async fn callback(
    axum::extract::State(state): axum::extract::State<CallbackState>,
    axum::extract::Query(params): axum::extract::Query<HashMap<String, String>>,
) -> (axum::http::StatusCode, [(axum::http::HeaderName, &'static str); 1], String) {
    use axum::http::{header::CONNECTION, StatusCode};
    let close = [(CONNECTION, "close")];
    if params.get("state").map(String::as_str) != Some(&*state.expected_state) {
        return (
            StatusCode::BAD_REQUEST,
            close,
            "tripline: this callback does not belong to the authorization in progress.\n".into(),
        );
    }
    if let Some(error) = params.get("error") {
        let detail = params.get("error_description").map(|d| format!(": {d}")).unwrap_or_default();
        let message = scrub(&format!("the provider refused: {error}{detail}"), &[]);
        let _ = state.outcome.try_send(Err(message.clone()));
        return (StatusCode::BAD_REQUEST, close, format!("tripline: {message}\n"));
    }
    match params.get("code") {
        Some(code) => {
            let _ = state.outcome.try_send(Ok(code.clone()));
            (
                StatusCode::OK,
                close,
                format!("tripline: connection {} is authorized. You can close this window.\n", state.connection),
            )
        }
        None => (StatusCode::BAD_REQUEST, close, "tripline: the callback carries no code.\n".into()),
    }
}

/// The HTTP client the `oauth2` crate sends token requests with: reqwest, with 429 and 5xx
/// answers turned into errors so that a token endpoint that is down reads as transient
/// rather than as an unparsable answer.
struct TokenHttp(reqwest::Client);

#[derive(Debug, thiserror::Error)]
pub(crate) enum TokenHttpError {
    #[error("the token endpoint answered {0}")]
    Status(u16),
    #[error("{0}")]
    Transport(String),
}

impl<'c> AsyncHttpClient<'c> for TokenHttp {
    type Error = TokenHttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, Self::Error>> + Send + Sync + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let request: reqwest::Request = request
                .try_into()
                .map_err(|e: reqwest::Error| TokenHttpError::Transport(super::describe_reqwest(e)))?;
            let response =
                self.0.execute(request).await.map_err(|e| TokenHttpError::Transport(super::describe_reqwest(e)))?;
            let status = response.status();
            if status.as_u16() == 429 || status.is_server_error() {
                return Err(TokenHttpError::Status(status.as_u16()));
            }
            let mut builder = oauth2::http::Response::builder().status(status);
            for (name, value) in response.headers() {
                builder = builder.header(name, value);
            }
            let body = response.bytes().await.map_err(|e| TokenHttpError::Transport(super::describe_reqwest(e)))?;
            builder.body(body.to_vec()).map_err(|e| TokenHttpError::Transport(e.to_string()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_uses_the_margin() {
        let now = Utc::now();
        let token = |secs: i64| StoredToken {
            access_token: Token::new("a"),
            refresh_token: None,
            expires_at: Some(now + chrono::Duration::seconds(secs)),
        };
        let margin = Duration::from_secs(60);
        assert!(token(3600).is_fresh(now, margin));
        assert!(!token(30).is_fresh(now, margin));
        assert!(!token(-5).is_fresh(now, margin));
        let unknown = StoredToken { expires_at: None, ..token(0) };
        assert!(unknown.is_fresh(now, margin));
    }

    #[test]
    fn stored_tokens_round_trip_and_never_print() {
        let t = StoredToken {
            access_token: Token::new("access-canary-1"),
            refresh_token: Some(Token::new("refresh-canary-2")),
            expires_at: Some("2030-01-01T00:00:00Z".parse().unwrap()),
        };
        let back = StoredToken::from_json(&t.to_json()).unwrap();
        assert_eq!(back, t);
        let shown = format!("{t:?}");
        assert!(!shown.contains("canary"), "{shown}");
        assert!(StoredToken::from_json("{").is_err());
    }

    #[test]
    fn listen_addresses_for_redirects() {
        let at = |u: &str| listen_address(&Url::parse(u).unwrap());
        assert_eq!(at("http://localhost:8976/cb"), Some("127.0.0.1:8976".parse().unwrap()));
        assert_eq!(at("http://127.0.0.1:0/cb"), Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(at("http://[::1]:9000/cb"), Some("[::1]:9000".parse().unwrap()));
        assert_eq!(at("https://tripline.example.com/cb"), None);
    }
}
