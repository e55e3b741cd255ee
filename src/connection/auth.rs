//! Authentication applied by the host: what each auth type adds to a request.
//!
//! A script only names the connection; the key, password or token is added here, per
//! attempt, and every value that went out is remembered so that an answer echoing it can be
//! scrubbed before anything reaches a script, a log or an error.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{HeaderName, HeaderValue, AUTHORIZATION};

use super::config::{ApiKeyIn, AuthConfig};
use super::oauth::{OAuth2, Token, TokenStore};
use super::ConnectionError;
use crate::diag::CheckCtx;
use crate::secret::{self, Secret, SecretRef};

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
    /// What `auth = { ... }` adds to requests, secrets resolved; `None` when the table has a
    /// problem, which is recorded at its place (every one), or when a secret is not set and the
    /// check defers that to a use. A connection that is not `enabled` is checked (its secrets
    /// only for how they are written) and sends nothing: [`Auth::None`].
    pub fn build(
        connection: &str,
        config: &AuthConfig,
        span: Range<usize>,
        enabled: bool,
        timeout: Duration,
        tokens: Arc<dyn TokenStore>,
        ctx: &mut CheckCtx,
    ) -> Option<Auth> {
        let secret = |ctx: &mut CheckCtx, secret: &SecretRef, what: &str| {
            if enabled {
                secret.check(ctx, what)
            } else {
                secret.check_syntax(ctx, what);
                None
            }
        };
        let auth = match config {
            AuthConfig::ApiKey { name, value, location } => {
                let mut usable = true;
                if name.trim().is_empty() {
                    ctx.error(span.clone(), "auth.name (the key's parameter name) is empty");
                    usable = false;
                } else if *location == ApiKeyIn::Header && HeaderName::from_bytes(name.as_bytes()).is_err() {
                    ctx.error(span.clone(), format!("auth.name `{name}` is not a valid header name"));
                    usable = false;
                }
                let value = secret(ctx, value, "auth.value").filter(|v| {
                    let fits = *location != ApiKeyIn::Header || !usable || header(connection, name, v.expose()).is_ok();
                    if !fits {
                        ctx.error(span.clone(), "auth.value: not a valid header value");
                    }
                    fits && usable
                });
                value.map(|value| Auth::ApiKey { name: name.clone(), value, location: *location })
            }
            AuthConfig::Basic { username, password } => {
                if username.is_empty() {
                    ctx.error(span.clone(), "auth.username is empty");
                }
                if username.contains(':') {
                    ctx.error(span.clone(), "auth.username cannot contain `:` in basic authentication");
                }
                secret(ctx, password, "auth.password").map(|password| {
                    let encoded =
                        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{}", password.expose()));
                    Auth::Header(Secret::new(format!("Basic {encoded}")))
                })
            }
            AuthConfig::Bearer { token } => secret(ctx, token, "auth.token")
                .map(|token| Auth::Header(Secret::new(format!("Bearer {}", token.expose())))),
            AuthConfig::OAuth2(o) => {
                OAuth2::build(connection, o, span, enabled, timeout, tokens, ctx).map(|o| Auth::OAuth2(Arc::new(o)))
            }
        };
        if enabled {
            auth
        } else {
            Some(Auth::None)
        }
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
///
/// An answer can carry a credential in an encoded form that a reader (a script, a JSON
/// parser, a person) turns back into the value: JSON string escapes (`\/` for `/`, as PHP
/// writes by default, `\u0042` for any character) and percent-encoding (a query string
/// echoed back). So the text is also read through each of those decodings; when a decoded
/// reading holds a credential, the decoded reading, scrubbed, is what is returned (its
/// escapes are lost, which only happens to an answer that echoed a credential).
pub(crate) fn scrub(text: &str, sent: &[String]) -> String {
    let mut out = replace_secrets(text, sent);
    // Each round looks through one or two layers of encoding (either order, for an escape
    // inside a percent-encoding or the reverse); three rounds cover deeper nesting than any
    // echo we know of.
    for _ in 0..3 {
        let json = json_unescaped(&out);
        let percent = percent_decoded(&out);
        let json_of_percent = percent.as_deref().and_then(json_unescaped);
        let percent_of_json = json.as_deref().and_then(percent_decoded);
        let hit = [json, percent, json_of_percent, percent_of_json].into_iter().flatten().find_map(|decoded| {
            let scrubbed = replace_secrets(&decoded, sent);
            (scrubbed != decoded).then_some(scrubbed)
        });
        match hit {
            Some(scrubbed) => out = scrubbed,
            None => break,
        }
    }
    out
}

/// Every string of a parsed JSON answer (object keys included) [`scrub`]bed: what a script
/// receives is the parsed value, in which every escape has been decoded.
pub(crate) fn scrub_json(value: serde_json::Value, sent: &[String]) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) => Value::String(scrub(&s, sent)),
        Value::Array(items) => Value::Array(items.into_iter().map(|v| scrub_json(v, sent)).collect()),
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (scrub(&k, sent), scrub_json(v, sent))).collect())
        }
        other => other,
    }
}

/// `text` with each value of `sent` (a whole header value such as `Basic dXNl...`, and the
/// credential after its scheme word) and each registered secret replaced.
fn replace_secrets(text: &str, sent: &[String]) -> String {
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

/// `text` with JSON string escapes decoded, when it has any; escapes that are not JSON's are
/// kept as written.
fn json_unescaped(text: &str) -> Option<String> {
    if !text.contains('\\') {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let (decoded, used) = json_escape(rest);
        match decoded {
            Some(c) => out.push(c),
            None => out.push_str(&rest[..used]),
        }
        rest = &rest[used..];
    }
    out.push_str(rest);
    Some(out)
}

/// The character of the JSON escape at the start of `text` (which starts with `\`), and how
/// many bytes it took; `None` for text that is not an escape.
fn json_escape(text: &str) -> (Option<char>, usize) {
    let hex4 = |s: &str| {
        s.get(..4).filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit())).and_then(|h| u16::from_str_radix(h, 16).ok())
    };
    let Some(kind) = text[1..].chars().next() else {
        return (None, 1);
    };
    let simple = match kind {
        '"' => Some('"'),
        '\\' => Some('\\'),
        '/' => Some('/'),
        'b' => Some('\u{8}'),
        'f' => Some('\u{c}'),
        'n' => Some('\n'),
        'r' => Some('\r'),
        't' => Some('\t'),
        _ => None,
    };
    if let Some(c) = simple {
        return (Some(c), 2);
    }
    if kind != 'u' {
        return (None, 1);
    }
    let Some(high) = hex4(&text[2..]) else {
        return (None, 1);
    };
    if (0xD800..0xDC00).contains(&high) {
        if let Some(low) = text.get(6..8).filter(|m| *m == "\\u").and_then(|_| hex4(&text[8..])) {
            if (0xDC00..0xE000).contains(&low) {
                let c = 0x10000 + ((u32::from(high) - 0xD800) << 10) + (u32::from(low) - 0xDC00);
                return (char::from_u32(c), 12);
            }
        }
    }
    (char::from_u32(u32::from(high)), 6)
}

/// `text` with percent-encoding (and `+` for a space, as forms write it) decoded, when it has
/// any.
fn percent_decoded(text: &str) -> Option<String> {
    if !text.contains('%') && !text.contains('+') {
        return None;
    }
    let spaced = text.replace('+', " ");
    Some(percent_encoding::percent_decode_str(&spaced).decode_utf8_lossy().into_owned())
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

    #[test]
    fn scrub_sees_through_json_escapes_and_percent_encoding() {
        let sent = vec!["Bearer tok/en-5678".to_string(), "Basic dXNlcjpw+YXNz/Zz".to_string()];
        for echoed in [
            r#"Bearer tok\/en-5678"#,
            r#"\u0042earer \u0074ok\/e\u006e-5678"#,
            r#"tok\u002Fen-5678"#,
            "tok%2Fen-5678",
            "Bearer+tok%2Fen-5678",
            r#"dXNlcjpw+YXNz\/Zz"#,
            "dXNlcjpw%2BYXNz%2FZz",
            r#"dXNlcjpw%2BYXNz\u002FZz"#,
        ] {
            let out = scrub(&format!("you sent {echoed}!"), &sent);
            assert!(out.contains("**REDACTED**") && !out.contains("5678") && !out.contains("YXNz"), "{echoed}: {out}");
        }
        // Escapes and encodings without a credential are left as they were.
        assert_eq!(scrub(r#"a\/b %2F c+d \u00e9"#, &sent), r#"a\/b %2F c+d \u00e9"#);
        assert_eq!(json_unescaped(r#"\ud83d\ude00 \x \u12"#).unwrap(), "\u{1F600} \\x \\u12");
    }

    #[test]
    fn scrub_json_walks_every_string_and_key() {
        let sent = vec!["Bearer tok/en-5678".to_string()];
        let body: serde_json::Value =
            serde_json::from_str(r#"{"h": ["Bearer tok\/en-5678"], "tok\u002fen-5678": {"n": 1, "s": "ok"}}"#).unwrap();
        let out = scrub_json(body, &sent).to_string();
        assert!(!out.contains("5678") && out.contains("**REDACTED**") && out.contains(r#""s":"ok""#), "{out}");
    }
}
