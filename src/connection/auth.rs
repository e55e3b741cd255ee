//! Authentication applied by the host: what each auth type adds to a request.
//!
//! A script only names the connection; the key, password or token is added here, per
//! attempt, and every value that went out is remembered so that an answer echoing it can be
//! scrubbed before anything reaches a script, a log or an error.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{HeaderName, HeaderValue, AUTHORIZATION};

use super::config::{ApiKeyIn, AuthConfig};
use super::oauth::{OAuth2, Token, TokenStore};
use super::ConnectionError;
use crate::config::{secret, Secret};

/// A connection's authentication, secrets resolved.
pub(crate) enum Auth {
    None,
    ApiKey {
        name: String,
        value: Secret,
        location: ApiKeyIn,
    },
    /// The whole `Authorization` value, built once.
    Header(Secret),
    OAuth2(Arc<OAuth2>),
}

/// What one attempt adds to its request.
#[derive(Default)]
pub(crate) struct Credentials {
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub query: Option<(String, String)>,
    pub form: Option<(String, String)>,
    /// Every secret value this request carries, to scrub from what comes back.
    pub sent: Vec<String>,
    /// The OAuth2 access token used, to tell a 401 for it from one for a newer token.
    pub token: Option<Token>,
}

impl Auth {
    pub fn build(
        connection: &str,
        config: &AuthConfig,
        timeout: Duration,
        tokens: Arc<dyn TokenStore>,
    ) -> Result<Auth, ConnectionError> {
        let resolve = |what: &str, secret: &crate::config::SecretRef| {
            secret.resolve().map_err(|e| ConnectionError::Invalid {
                connection: connection.to_string(),
                message: format!("{what}: {e}"),
            })
        };
        Ok(match config {
            AuthConfig::ApiKey { name, value, location } => {
                let value = resolve("auth.value", value)?;
                if *location == ApiKeyIn::Header {
                    header(connection, name, value.expose())?;
                }
                Auth::ApiKey { name: name.clone(), value, location: *location }
            }
            AuthConfig::Basic { username, password } => {
                let password = resolve("auth.password", password)?;
                let encoded =
                    base64::engine::general_purpose::STANDARD.encode(format!("{username}:{}", password.expose()));
                Auth::Header(Secret::new(format!("Basic {encoded}")))
            }
            AuthConfig::Bearer { token } => {
                let token = resolve("auth.token", token)?;
                Auth::Header(Secret::new(format!("Bearer {}", token.expose())))
            }
            AuthConfig::OAuth2(o) => Auth::OAuth2(Arc::new(OAuth2::build(connection, o, timeout, tokens)?)),
        })
    }

    /// A short name for logs and `Debug`.
    pub fn kind(&self) -> &'static str {
        match self {
            Auth::None => "none",
            Auth::ApiKey { .. } => "api_key",
            Auth::Header(_) => "header",
            Auth::OAuth2(_) => "oauth2",
        }
    }

    /// What the next attempt sends; for OAuth2 this obtains or refreshes the token.
    pub async fn credentials(&self, connection: &str) -> Result<Credentials, ConnectionError> {
        match self {
            Auth::None => Ok(Credentials::default()),
            Auth::ApiKey { name, value, location } => {
                let mut c = Credentials { sent: vec![value.expose().to_string()], ..Credentials::default() };
                let pair = (name.clone(), value.expose().to_string());
                match location {
                    ApiKeyIn::Header => c.headers.push(header(connection, name, value.expose())?),
                    ApiKeyIn::Query => c.query = Some(pair),
                    ApiKeyIn::Form => c.form = Some(pair),
                }
                Ok(c)
            }
            Auth::Header(value) => Ok(Credentials {
                headers: vec![header(connection, AUTHORIZATION.as_str(), value.expose())?],
                sent: vec![value.expose().to_string()],
                ..Credentials::default()
            }),
            Auth::OAuth2(oauth) => {
                let token = oauth.access_token().await?;
                oauth.credentials(token)
            }
        }
    }
}

/// A header carrying a secret, marked sensitive so that no `Debug` of it shows the value.
fn header(connection: &str, name: &str, value: &str) -> Result<(HeaderName, HeaderValue), ConnectionError> {
    let invalid = |what: &str| ConnectionError::Invalid {
        connection: connection.to_string(),
        message: format!("the credential's {what} cannot be sent in a header"),
    };
    let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid("header name"))?;
    let mut value = HeaderValue::from_str(value).map_err(|_| invalid("value"))?;
    value.set_sensitive(true);
    Ok((name, value))
}

/// Replaces every value in `sent` (and every registered secret) in `text` with
/// `**REDACTED**`. Values shorter than four characters are left, as [`secret::redact`] does.
pub(crate) fn scrub(text: &str, sent: &[String]) -> String {
    let mut out = text.to_string();
    for value in sent {
        for candidate in [value.as_str(), value.split_once(' ').map_or("", |(_, v)| v)] {
            if candidate.len() >= 4 && out.contains(candidate) {
                out = out.replace(candidate, "**REDACTED**");
            }
        }
    }
    secret::redact(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_replaces_whole_header_values_and_their_credentials() {
        let sent = vec!["Basic dXNlcjpwYXNz".to_string(), "key-12345".to_string()];
        assert_eq!(
            scrub("got Basic dXNlcjpwYXNz and key-12345 and dXNlcjpwYXNz", &sent),
            "got **REDACTED** and **REDACTED** and **REDACTED**"
        );
        assert_eq!(scrub("abc", &["abc".to_string()]), "abc");
    }
}
