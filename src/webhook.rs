//! Webhooks: `[webhooks.NAME]`, each validated into a [`Webhook`] that authenticates a
//! delivery (an HMAC-SHA256 signature of the body, or a bearer token) and maps its body to a
//! record. The HTTP server that receives deliveries is [`crate::server`].
//!
//! ```toml
//! [server]
//! listen = "127.0.0.1:8080"
//!
//! [webhooks.nexthink]
//! path = "/hooks/nexthink"
//! entity = "ticket"
//! event = "created"                       # the default; or updated, deleted, a custom name
//! auth = { type = "hmac_sha256", header = "X-Signature", secret = "${NEXTHINK_HOOK_SECRET}" }
//! max_body_bytes = 65536
//! fields = { Device = "device.name", EmployeeId = "employee.id" }   # pick and rename
//! set = { Source = "Nexthink" }           # constant fields
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderName};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use toml::Spanned;

use crate::diag::CheckCtx;
use crate::record::{lookup, EventKind, Fields};
use crate::secret::{Secret, SecretRef};

/// `max_body_bytes` when not set.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Paths the server answers itself (`/healthz`, `/metrics`), which no webhook may take.
pub const RESERVED_PATHS: [&str; 2] = ["/healthz", "/metrics"];

/// `[webhooks.NAME]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The URL path deliveries are POSTed to; starts with `/`, unique among webhooks.
    pub path: Spanned<String>,
    /// The entity of the records it stores.
    pub entity: Spanned<String>,
    /// The event stored (default `created`; `updated` and `deleted` need the record's `id`).
    #[serde(default)]
    pub event: Option<Spanned<String>>,
    /// How deliveries prove they come from the sender.
    pub auth: Spanned<AuthConfig>,
    /// The largest body accepted (default 1 MiB).
    #[serde(default)]
    pub max_body_bytes: Option<Spanned<usize>>,
    /// Picks and renames fields: record field -> dotted path in the body. Without it, the
    /// body's keys are the record's fields.
    #[serde(default)]
    pub fields: Option<Spanned<BTreeMap<String, String>>>,
    /// Constant fields added to every record (e.g. `Source = "Nexthink"` for rules to match).
    #[serde(default)]
    pub set: Option<Spanned<toml::Table>>,
}

/// `auth = { type = "...", ... }`.
///
/// Read through a flat struct rather than `#[serde(tag = "type")]` because serde buffers
/// tagged enums, which loses the spans that [`SecretRef`] needs.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawAuth")]
pub enum AuthConfig {
    /// The header carries the hex HMAC-SHA256 of the raw body under a shared secret,
    /// optionally prefixed `sha256=` (GitHub's style).
    HmacSha256 { header: String, secret: SecretRef },
    /// `Authorization: Bearer TOKEN`.
    Bearer { token: SecretRef },
    /// No authentication: only for a listener that nothing untrusted can reach.
    None,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    #[serde(rename = "type")]
    kind: String,
    header: Option<String>,
    secret: Option<SecretRef>,
    token: Option<SecretRef>,
}

impl TryFrom<RawAuth> for AuthConfig {
    type Error = String;

    fn try_from(r: RawAuth) -> Result<Self, String> {
        let not_for = |present: bool, key: &str| {
            if present {
                Err(format!("`{key}` does not apply to auth type {:?}", r.kind))
            } else {
                Ok(())
            }
        };
        match r.kind.as_str() {
            "hmac_sha256" => {
                not_for(r.token.is_some(), "token")?;
                Ok(AuthConfig::HmacSha256 {
                    header: r.header.unwrap_or_else(|| "X-Signature".into()),
                    secret: r.secret.ok_or("auth type \"hmac_sha256\" needs `secret`")?,
                })
            }
            "bearer" => {
                not_for(r.header.is_some(), "header")?;
                not_for(r.secret.is_some(), "secret")?;
                Ok(AuthConfig::Bearer { token: r.token.ok_or("auth type \"bearer\" needs `token`")? })
            }
            "none" => {
                not_for(r.header.is_some(), "header")?;
                not_for(r.secret.is_some(), "secret")?;
                not_for(r.token.is_some(), "token")?;
                Ok(AuthConfig::None)
            }
            other => {
                let hint = match crate::diag::did_you_mean(other, ["hmac_sha256", "bearer", "none"]) {
                    Some(s) => format!("; did you mean {s:?}?"),
                    None => String::new(),
                };
                Err(format!("auth `type` is \"hmac_sha256\", \"bearer\" or \"none\", not {other:?}{hint}"))
            }
        }
    }
}

/// Builds every `[webhooks.NAME]`, recording every problem: each section's, a path that two
/// webhooks share, and webhooks without a `[server]` to receive them (`has_server`).
pub fn build(webhooks: &BTreeMap<String, Spanned<WebhookConfig>>, has_server: bool, ctx: &mut CheckCtx) -> Webhooks {
    let mut by_path = HashMap::new();
    let mut paths: HashMap<&str, &str> = HashMap::new();
    for (name, w) in webhooks {
        let cfg = w.get_ref();
        if let Some(hook) = cfg.build(name, ctx) {
            by_path.insert(hook.path.clone(), Arc::new(hook));
        }
        let path = cfg.path.get_ref().as_str();
        if let Some(other) = paths.insert(path, name) {
            ctx.error(
                cfg.path.span(),
                format!("[webhooks.{name}] path {path:?} is already the path of [webhooks.{other}]"),
            );
        }
    }
    if !has_server {
        if let Some((name, w)) = webhooks.iter().next() {
            ctx.error(
                w.span(),
                format!("[webhooks.{name}] needs a [server] section with `listen` to receive requests"),
            );
        }
    }
    Webhooks { by_path }
}

impl WebhookConfig {
    /// The webhook, secrets resolved; `None` when the section has a problem, which is
    /// recorded (every problem, each at its place).
    pub fn build(&self, name: &str, ctx: &mut CheckCtx) -> Option<Webhook> {
        let errors = ctx.errors();
        let deferred = ctx.deferrals();
        let path = self.path.get_ref();
        if !path.starts_with('/') {
            ctx.error(self.path.span(), format!("[webhooks.{name}] path must start with `/`, as in \"/hooks/{name}\""));
        } else if path.contains(['?', '#', ' ']) {
            ctx.error(
                self.path.span(),
                format!("[webhooks.{name}] path {path:?} must be a plain path (no query, fragment or space)"),
            );
        } else if RESERVED_PATHS.contains(&path.as_str()) {
            ctx.error(self.path.span(), format!("[webhooks.{name}] path {path:?} is the server's own"));
        }
        if self.entity.get_ref().trim().is_empty() {
            ctx.error(self.entity.span(), format!("[webhooks.{name}] needs an entity"));
        }
        let kind = match &self.event {
            Some(e) => {
                event_kind(e.get_ref()).map_err(|m| ctx.error(e.span(), format!("[webhooks.{name}] event: {m}"))).ok()
            }
            None => Some(EventKind::Created),
        };
        let max_body_bytes = match &self.max_body_bytes {
            Some(m) if *m.get_ref() == 0 => {
                ctx.error(m.span(), format!("[webhooks.{name}] max_body_bytes must be at least 1"));
                DEFAULT_MAX_BODY_BYTES
            }
            Some(m) => *m.get_ref(),
            None => DEFAULT_MAX_BODY_BYTES,
        };
        let auth = match self.auth.get_ref() {
            AuthConfig::HmacSha256 { header, secret } => {
                let header = HeaderName::from_bytes(header.as_bytes())
                    .map_err(|_| {
                        ctx.error(self.auth.span(), format!("[webhooks.{name}] auth: {header:?} is not a header name"))
                    })
                    .ok();
                let key = secret.check(ctx, &format!("[webhooks.{name}] auth secret")).filter(|s| {
                    let empty = s.expose().is_empty();
                    if empty {
                        ctx.error(secret.span(), format!("[webhooks.{name}] auth secret is empty"));
                    }
                    !empty
                });
                header.zip(key).map(|(header, key)| Auth::Hmac { header, key })
            }
            AuthConfig::Bearer { token } => token.check(ctx, &format!("[webhooks.{name}] auth token")).and_then(|s| {
                if s.expose().is_empty() {
                    ctx.error(token.span(), format!("[webhooks.{name}] auth token is empty"));
                    return None;
                }
                Some(Auth::Bearer { token_hash: Sha256::digest(s.expose()).into() })
            }),
            AuthConfig::None => Some(Auth::None),
        };
        let fields = self.fields.as_ref().map(|fields| {
            let mut mapping = Vec::new();
            for (target, source) in fields.get_ref() {
                match field_mapping(target, source) {
                    Ok(m) => mapping.push(m),
                    Err(m) => ctx.error(fields.span(), format!("[webhooks.{name}] fields: {m}")),
                }
            }
            mapping
        });
        let set = match &self.set {
            Some(set) => constant_fields(set.get_ref())
                .map_err(|m| ctx.error(set.span(), format!("[webhooks.{name}] set: {m}")))
                .ok(),
            None => Some(Fields::new()),
        };
        if ctx.errors() > errors || ctx.deferrals() > deferred {
            return None;
        }
        Some(Webhook {
            name: name.to_string(),
            path: path.clone(),
            entity: self.entity.get_ref().clone(),
            kind: kind?,
            auth: auth?,
            max_body_bytes,
            fields,
            set: set?,
        })
    }
}

fn event_kind(name: &str) -> Result<EventKind, String> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        return Err(format!(
            "{name:?} is not an event name (created, updated, deleted, or lowercase_with_underscores)"
        ));
    }
    Ok(EventKind::from(name.to_string()))
}

fn field_mapping(target: &str, source: &str) -> Result<(String, Vec<String>), String> {
    if target.is_empty() || target == "entity" {
        return Err(format!("{target:?} cannot be a record field"));
    }
    let path: Vec<String> = source.split('.').map(String::from).collect();
    if path.iter().any(String::is_empty) {
        return Err(format!("{target} = {source:?}: not a dotted path such as \"employee.id\""));
    }
    Ok((target.to_string(), path))
}

fn constant_fields(table: &toml::Table) -> Result<Fields, String> {
    match crate::de::toml_to_json(&toml::Value::Table(table.clone()))? {
        Value::Object(o) if o.contains_key("entity") => Err("`entity` cannot be a record field".into()),
        Value::Object(o) => Ok(o),
        _ => unreachable!("a table is an object"),
    }
}

/// How a webhook authenticates deliveries.
enum Auth {
    Hmac {
        header: HeaderName,
        key: Secret,
    },
    /// The token's SHA-256: comparing digests in constant time leaks neither the token nor its
    /// length.
    Bearer {
        token_hash: [u8; 32],
    },
    None,
}

/// A webhook ready to receive.
pub struct Webhook {
    pub name: String,
    pub path: String,
    pub entity: String,
    pub kind: EventKind,
    auth: Auth,
    pub max_body_bytes: usize,
    fields: Option<Vec<(String, Vec<String>)>>,
    set: Fields,
}

impl Webhook {
    /// Whether the request carries valid credentials for `body`.
    pub fn authenticate(&self, headers: &HeaderMap, body: &[u8]) -> bool {
        match &self.auth {
            Auth::None => true,
            Auth::Hmac { header, key } => {
                let Some(value) = headers.get(header).and_then(|v| v.to_str().ok()) else { return false };
                let value = value.trim();
                let hex_sig = value.strip_prefix("sha256=").unwrap_or(value);
                let Ok(sig) = hex::decode(hex_sig) else { return false };
                let mut mac =
                    Hmac::<Sha256>::new_from_slice(key.expose().as_bytes()).expect("HMAC takes keys of any length");
                mac.update(body);
                mac.verify_slice(&sig).is_ok()
            }
            Auth::Bearer { token_hash } => {
                let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
                    return false;
                };
                let Some(token) = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")) else {
                    return false;
                };
                let given: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
                given.ct_eq(token_hash).into()
            }
        }
    }

    /// Whether deliveries authenticate with a bearer token (a refusal then says so in
    /// `WWW-Authenticate`).
    pub fn takes_bearer(&self) -> bool {
        matches!(self.auth, Auth::Bearer { .. })
    }

    /// The record a body becomes: its fields picked and renamed by `fields`, plus `set`.
    pub fn record_of(&self, body: serde_json::Map<String, Value>) -> Fields {
        let mut out = match &self.fields {
            None => body,
            Some(mapping) => {
                let mut out = Fields::new();
                for (target, path) in mapping {
                    if let Some(v) = lookup(&body, path) {
                        out.insert(target.clone(), v.clone());
                    }
                }
                out
            }
        };
        for (k, v) in &self.set {
            out.insert(k.clone(), v.clone());
        }
        out
    }
}

/// The webhooks by path.
#[derive(Clone, Default)]
pub struct Webhooks {
    by_path: HashMap<String, Arc<Webhook>>,
}

impl Webhooks {
    /// The entities the webhooks store records of.
    pub fn entities(&self) -> impl Iterator<Item = String> + '_ {
        self.by_path.values().map(|w| w.entity.clone())
    }

    /// The webhook of a path.
    pub fn get(&self, path: &str) -> Option<&Arc<Webhook>> {
        self.by_path.get(path)
    }

    pub fn len(&self) -> usize {
        self.by_path.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn hook(auth: &str, extra: &str) -> Webhook {
        let text = format!("path = \"/h\"\nentity = \"ticket\"\nauth = {auth}\n{extra}");
        let mut ctx = CheckCtx::new(std::path::Path::new("t.toml"), &text, std::path::Path::new("."));
        let hook = toml::from_str::<WebhookConfig>(&text).unwrap().build("h", &mut ctx);
        assert!(ctx.diags.is_empty(), "{:?}", ctx.diags);
        hook.unwrap()
    }

    #[test]
    fn hmac_signatures_are_checked_with_or_without_prefix() {
        let h = hook("{ type = \"hmac_sha256\", header = \"X-Sig\", secret = \"k3y-webhook-unit\" }", "");
        let body = br#"{"a":1}"#;
        let mut mac = Hmac::<Sha256>::new_from_slice(b"k3y-webhook-unit").unwrap();
        mac.update(body);
        let sig = hex::encode(mac.finalize().into_bytes());
        let with = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert("x-sig", v.parse().unwrap());
            m
        };
        assert!(h.authenticate(&with(&sig), body));
        assert!(h.authenticate(&with(&format!("sha256={sig}")), body));
        assert!(!h.authenticate(&with(&sig), br#"{"a":2}"#));
        assert!(!h.authenticate(&with("zz"), body));
        assert!(!h.authenticate(&HeaderMap::new(), body));
    }

    #[test]
    fn bearer_tokens_are_compared() {
        let h = hook("{ type = \"bearer\", token = \"t0ken-webhook-unit\" }", "");
        let mut m = HeaderMap::new();
        m.insert(header::AUTHORIZATION, "Bearer t0ken-webhook-unit".parse().unwrap());
        assert!(h.authenticate(&m, b""));
        m.insert(header::AUTHORIZATION, "Bearer t0ken-webhook-uni".parse().unwrap());
        assert!(!h.authenticate(&m, b""));
    }

    #[test]
    fn fields_are_picked_renamed_and_set() {
        let h = hook(
            "{ type = \"none\" }",
            "fields = { Source = \"source\", EmployeeId = \"employee.id\", Missing = \"nope\" }\nset = { Kind = \"alert\" }",
        );
        let Value::Object(body) = json!({"source": "nx", "employee": {"id": 7}, "other": 1}) else { unreachable!() };
        let r = h.record_of(body);
        assert_eq!(Value::Object(r), json!({"Source": "nx", "EmployeeId": 7, "Kind": "alert"}));
    }

    #[test]
    fn auth_types_take_only_their_settings() {
        let e = toml::from_str::<WebhookConfig>(
            "path = \"/h\"\nentity = \"t\"\nauth = { type = \"bearer\", token = \"x\", secret = \"y\" }",
        )
        .unwrap_err();
        assert!(e.message().contains("`secret` does not apply"), "{e}");
        let e =
            toml::from_str::<WebhookConfig>("path = \"/h\"\nentity = \"t\"\nauth = { type = \"hmac\" }").unwrap_err();
        assert!(e.message().contains("did you mean \"hmac_sha256\""), "{e}");
    }
}
