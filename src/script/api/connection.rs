//! `api.connection(name)`: authenticated HTTP calls to the configured APIs, and
//! `api.sanitize(value)` for the text they answer with.
//!
//! ```rhai
//! let hr = api.connection("flex_hr");
//! let r = hr.get("companies", #{ query: #{ instanceId: params.instance_id } });
//! let users = hr.get_all("users", #{ style: "page", size_param: "pageSize", size: 100,
//!                                    total_pages: "totalPages", items: "users" });
//! hr.post("users/42/notes", #{ text: "synced" }, #{ headers: #{ "X-Request-Id": "..." } });
//! ```
//!
//! A handle names its connection and nothing else: the host adds the credentials, so a
//! script never holds a password, key or token, and answers are scrubbed of any credential
//! they echo. A call waits on the runtime's async executor, bounded by what is left of the
//! run's `[limits] timeout_ms`.
//!
//! Errors: a non-2xx answer is a script error carrying the status and a body excerpt (unless
//! the call passes `allow_error: true` and reads `status` itself); a failure that may pass
//! (429, 5xx, a timeout, an unreachable peer) marks the run transient, so a rule's run is
//! retried with backoff and a job's next tick tries again.
//!
//! Dry runs (`tripline test`): GETs are sent, since reading changes nothing and the script's
//! decisions depend on what it reads; every other method is logged as "would POST ..." and
//! answered with `#{status: 0, dry_run: true}` without being sent.

use std::sync::Arc;

use reqwest::Method;
use rhai::plugin::*;
use rhai::{Array, CustomType, Dynamic, Engine, EvalAltResult, Map};
use serde_json::Value;

use super::RunCtx;
use crate::connection::{Connection, ConnectionError, Paging, PagingOptions, RequestOptions, Response};
use crate::script::{dynamic_to_json, json_to_dynamic};

type Res<T> = Result<T, Box<EvalAltResult>>;

/// A configured HTTP connection (`api.connection("NAME")`), bound to the run that asked for
/// it: its log, its deadline, its dry-run mode. The host adds the credentials.
#[derive(Clone, CustomType)]
#[rhai_type(name = "Connection")]
pub struct ConnectionHandle {
    #[rhai_type(skip)]
    conn: Arc<Connection>,
    #[rhai_type(skip)]
    ctx: Arc<RunCtx>,
}

/// The keys of a request's `options` map.
const REQUEST_OPTIONS: [&str; 4] = ["query", "headers", "form", "allow_error"];

/// The keys of `get_all`'s map that are not [`Paging`] settings.
const PAGING_EXTRAS: [&str; 4] = ["items", "query", "headers", "max_pages"];

/// How much earlier than the run's deadline a connection stops on its own.
const DEADLINE_MARGIN: std::time::Duration = std::time::Duration::from_millis(25);

/// How much of a dry run's request body its log line shows.
const DRY_RUN_BODY_CHARS: usize = 200;

/// Registers the `Connection` handle, `api.connection`, the handle's methods and
/// `api.sanitize`.
pub fn register(engine: &mut Engine) {
    engine.build_type::<ConnectionHandle>();
    engine.register_global_module(exported_module!(functions).into());
}

#[export_module]
mod functions {
    use reqwest::Method;
    use rhai::{Array, Dynamic, Map};

    use super::{sanitize as clean, unknown_connection, ConnectionHandle as Connection};
    use crate::class::Class;
    use crate::script::api::{Api, RhaiResultOf};

    /// The HTTP connection configured as `[connections.NAME]`, for this run. The host adds its
    /// credentials: the script never sees a token, password or key.
    #[rhai_fn(pure, return_raw)]
    pub fn connection(api: &mut Api, name: &str) -> RhaiResultOf<Connection> {
        let ctx = api.0.clone();
        match ctx.hosts.connections.get(name) {
            Some(conn) => Ok(Connection { conn: conn.clone(), ctx: ctx.clone() }),
            None => match ctx.hosts.unavailable_connections.get(name) {
                Some(why) => Err(ctx.host_error(format!("connection {name} cannot be used: {why}"), Class::Permanent)),
                None => Err(unknown_connection(&ctx, name).into()),
            },
        }
    }

    /// `value` with every string in it (maps and arrays followed) trimmed, whitespace runs
    /// folded to one space, control and invisible format characters dropped: what an API
    /// answered, made safe to store and compare.
    #[rhai_fn(pure, return_raw)]
    pub fn sanitize(api: &mut Api, value: Dynamic) -> RhaiResultOf<Dynamic> {
        let _ = api;
        clean(value)
    }

    /// `connection NAME`.
    #[rhai_fn(name = "to_string", pure)]
    pub fn to_string(h: &mut Connection) -> String {
        format!("connection {}", h.conn.name())
    }

    /// `connection NAME`.
    #[rhai_fn(name = "to_debug", pure)]
    pub fn to_debug(h: &mut Connection) -> String {
        format!("connection {}", h.conn.name())
    }

    /// GET `path` (relative to `base_url`); the answer as `#{status, headers, body}`. A non-2xx
    /// answer is an error.
    #[rhai_fn(name = "get", pure, return_raw)]
    pub fn get(h: &mut Connection, path: &str) -> RhaiResultOf<Map> {
        h.call(Method::GET, path, None, Map::new())
    }

    /// GET `path` with options `#{query, headers, allow_error}`.
    #[rhai_fn(name = "get", pure, return_raw)]
    pub fn get_with_options(h: &mut Connection, path: &str, options: Map) -> RhaiResultOf<Map> {
        h.call(Method::GET, path, None, options)
    }

    /// DELETE `path`.
    #[rhai_fn(name = "delete", pure, return_raw)]
    pub fn delete(h: &mut Connection, path: &str) -> RhaiResultOf<Map> {
        h.call(Method::DELETE, path, None, Map::new())
    }

    /// DELETE `path` with options `#{query, headers, allow_error}`.
    #[rhai_fn(name = "delete", pure, return_raw)]
    pub fn delete_with_options(h: &mut Connection, path: &str, options: Map) -> RhaiResultOf<Map> {
        h.call(Method::DELETE, path, None, options)
    }

    /// POST `body` (sent as JSON; `()` for none) to `path`.
    #[rhai_fn(name = "post", pure, return_raw)]
    pub fn post(h: &mut Connection, path: &str, body: Dynamic) -> RhaiResultOf<Map> {
        h.call(Method::POST, path, Some(body), Map::new())
    }

    /// POST `body` to `path` with options `#{query, headers, form, allow_error}`.
    #[rhai_fn(name = "post", pure, return_raw)]
    pub fn post_with_options(h: &mut Connection, path: &str, body: Dynamic, options: Map) -> RhaiResultOf<Map> {
        h.call(Method::POST, path, Some(body), options)
    }

    /// PUT `body` to `path`.
    #[rhai_fn(name = "put", pure, return_raw)]
    pub fn put(h: &mut Connection, path: &str, body: Dynamic) -> RhaiResultOf<Map> {
        h.call(Method::PUT, path, Some(body), Map::new())
    }

    /// PUT `body` to `path` with options `#{query, headers, form, allow_error}`.
    #[rhai_fn(name = "put", pure, return_raw)]
    pub fn put_with_options(h: &mut Connection, path: &str, body: Dynamic, options: Map) -> RhaiResultOf<Map> {
        h.call(Method::PUT, path, Some(body), options)
    }

    /// PATCH `path` with `body`.
    #[rhai_fn(name = "patch", pure, return_raw)]
    pub fn patch(h: &mut Connection, path: &str, body: Dynamic) -> RhaiResultOf<Map> {
        h.call(Method::PATCH, path, Some(body), Map::new())
    }

    /// PATCH `path` with `body` and options `#{query, headers, form, allow_error}`.
    #[rhai_fn(name = "patch", pure, return_raw)]
    pub fn patch_with_options(h: &mut Connection, path: &str, body: Dynamic, options: Map) -> RhaiResultOf<Map> {
        h.call(Method::PATCH, path, Some(body), options)
    }

    /// Every page's items of a paged GET, in order: `paging` names the `style` (page, offset,
    /// cursor, next_link, link_header) and its settings, plus `items`, `query`, `headers` and
    /// `max_pages`.
    #[rhai_fn(pure, return_raw)]
    pub fn get_all(h: &mut Connection, path: &str, paging: Map) -> RhaiResultOf<Array> {
        h.get_all(path, paging)
    }
}

impl ConnectionHandle {
    /// One request; the answer as `#{status, headers, body}`.
    fn call(&self, method: Method, path: &str, body: Option<Dynamic>, options: Map) -> Res<Map> {
        let mut request = request_options(options)?;
        let body = match body {
            Some(b) if !b.is_unit() => Some(dynamic_to_json(&b).map_err(|e| format!("{method} {path}: body is {e}"))?),
            _ => None,
        };
        if body.is_some() && request.form.is_some() {
            return Err(format!("{method} {path}: a request has a JSON body or a `form`, not both").into());
        }
        request.json = body;
        if self.ctx.dry_run && method != Method::GET {
            // Not sent, but a path that would leave the connection's host fails the dry run
            // as it would fail the real one.
            self.conn.check_path(path, &request.query).map_err(|e| self.ctx.fail(&e))?;
            self.log_dry_run(&method, path, &request);
            let mut answer = Map::new();
            answer.insert("status".into(), Dynamic::from_int(0));
            answer.insert("dry_run".into(), Dynamic::TRUE);
            return Ok(answer);
        }
        request.deadline = Some(self.deadline());
        let unsafe_method = !crate::connection::is_idempotent(&method);
        if unsafe_method && self.conn.idempotency_header().is_some() {
            request.idempotency_key = Some(self.idempotency_key(&method, path));
        }
        let keyed = request.idempotency_key.is_some();
        let what = format!("{method} {}", path_only(path));
        let conn = self.conn.clone();
        let started = std::time::Instant::now() < self.ctx.deadline;
        let m = method.clone();
        let response =
            match self.ctx.within_deadline(&self.what(&what), async move { conn.request(m, path, request).await }) {
                Ok(result) => result.map_err(|e| self.ctx.fail(&e))?,
                // The run's deadline cut the call off from outside the connection (which stops at
                // the same deadline itself, so this is rare): a request that is not idempotent
                // and may have gone out must not be repeated by the run's retry.
                Err(_) if started && unsafe_method && !keyed => {
                    let e = ConnectionError::OutcomeUnknown {
                        connection: self.conn.name().to_string(),
                        method: method.to_string(),
                        path: path_only(path).to_string(),
                        reason: "the run's time limit ([limits] timeout_ms) cut it off".into(),
                    };
                    return Err(self.ctx.fail(&e));
                }
                Err(cut) => return Err(cut),
            };
        Ok(response_map(response))
    }

    /// Every page's items, in order.
    fn get_all(&self, path: &str, map: Map) -> Res<Array> {
        let options = paging_options(map)?;
        let conn = self.conn.clone();
        let what = format!("GET {} (all pages)", path_only(path));
        let deadline = Some(self.deadline());
        let items = self.wait(&what, async move { conn.get_all_until(path, options, deadline).await })?;
        Ok(items.iter().map(json_to_dynamic).collect())
    }

    /// Waits for a call, at most until the run's deadline; connection errors become script
    /// errors, transient when trying again later may help.
    fn wait<T>(&self, what: &str, call: impl std::future::Future<Output = Result<T, ConnectionError>>) -> Res<T> {
        self.ctx.within_deadline(&self.what(what), call)?.map_err(|e| self.ctx.fail(&e))
    }

    fn what(&self, call: &str) -> String {
        format!("connection {}: {call}", self.conn.name())
    }

    /// The run's deadline on tokio's clock, for the connection's own waits, a moment early:
    /// the connection's own error says whether a request went out (which decides whether a
    /// POST may be retried), so it should end the call rather than `within_deadline`'s timer
    /// firing at the same instant.
    fn deadline(&self) -> tokio::time::Instant {
        let left = self.ctx.deadline.saturating_duration_since(std::time::Instant::now());
        tokio::time::Instant::now() + left.saturating_sub(DEADLINE_MARGIN)
    }

    /// The idempotency key of this run's next non-idempotent request: a UUID-shaped digest of
    /// the run's scope (the same on every attempt of the run), the connection, the request's
    /// sequence number in the run, its method and path. A retry of the run makes the same
    /// requests in the same order, so each gets the key it had before.
    fn idempotency_key(&self, method: &Method, path: &str) -> String {
        use sha2::Digest as _;
        let seq = self.ctx.next_unsafe_call();
        let mut hash = sha2::Sha256::new();
        for part in [
            self.ctx.idempotency_scope().as_str(),
            self.conn.name(),
            &seq.to_string(),
            method.as_str(),
            path_only(path),
        ] {
            hash.update(part.as_bytes());
            hash.update([0]);
        }
        let digest = hash.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        uuid::Builder::from_random_bytes(bytes).into_uuid().to_string()
    }

    fn log_dry_run(&self, method: &Method, path: &str, request: &RequestOptions) {
        let mut line = format!("dry run: would {method} {} on connection {}", path, self.conn.name());
        if !request.query.is_empty() {
            let query: Vec<String> = request.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
            line.push_str(&format!(" with query {}", query.join("&")));
        }
        if let Some(json) = &request.json {
            line.push_str(&format!(" with body {}", short(&json.to_string())));
        }
        if let Some(form) = &request.form {
            let fields: Vec<&str> = form.iter().map(|(k, _)| k.as_str()).collect();
            line.push_str(&format!(" with form fields {}", fields.join(", ")));
        }
        line.push_str(" (not sent)");
        self.ctx.plan(line);
    }
}

/// "no connection named ...", with a suggestion or the list of names.
fn unknown_connection(ctx: &RunCtx, name: &str) -> String {
    let names = ctx.hosts.connections.keys().map(String::as_str);
    match crate::diag::did_you_mean(name, names) {
        Some(s) => format!("no connection named {name:?}; did you mean {s:?}?"),
        None if ctx.hosts.connections.is_empty() => {
            format!("no connection named {name:?}; tripline.toml has no [connections.NAME] sections")
        }
        None => format!(
            "no connection named {name:?}; the configured connections are {}",
            ctx.hosts.connections.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
    }
}

/// A path without its query string, for messages.
fn path_only(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or(path)
}

fn short(text: &str) -> String {
    match text.char_indices().nth(DRY_RUN_BODY_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// An unknown key, with a suggestion.
fn unknown_key(key: &str, known: &[&str], what: &str) -> Box<EvalAltResult> {
    let hint = crate::diag::did_you_mean(key, known.iter().copied())
        .map(|s| format!("; did you mean `{s}`?"))
        .unwrap_or_else(|| format!(" (it takes {})", known.join(", ")));
    format!("`{key}` is not {what}{hint}").into()
}

/// `#{query, headers, form, allow_error}` as request options.
fn request_options(options: Map) -> Res<RequestOptions> {
    let mut out = RequestOptions::default();
    for (key, value) in options {
        match key.as_str() {
            "query" => out.query = pairs(value, "query")?,
            "headers" => out.headers = pairs(value, "headers")?,
            "form" => out.form = Some(pairs(value, "form")?),
            "allow_error" => {
                out.allow_error_status =
                    value.as_bool().map_err(|t| format!("option allow_error must be true or false, not {t}"))?
            }
            other => return Err(unknown_key(other, &REQUEST_OPTIONS, "a request option")),
        }
    }
    Ok(out)
}

/// A map of names to values as name/value pairs: scalars as text, arrays as repeated names,
/// `()` left out.
fn pairs(value: Dynamic, what: &str) -> Res<Vec<(String, String)>> {
    let type_name = value.type_name();
    let map = value.try_cast::<Map>().ok_or_else(|| format!("option {what} must be a map, not {type_name}"))?;
    let mut out = Vec::new();
    for (name, value) in map {
        let values = match value.clone().try_cast::<Array>() {
            Some(items) => items,
            None => vec![value],
        };
        for v in values {
            if v.is_unit() {
                continue;
            }
            if v.is_map() || v.is_array() {
                return Err(format!("{what}.{name} must be text, a number or true/false, not {}", v.type_name()).into());
            }
            out.push((name.to_string(), v.to_string()));
        }
    }
    Ok(out)
}

/// `get_all`'s map: a [`Paging`] style and its settings, plus `items`, `query`, `headers` and
/// `max_pages`.
fn paging_options(map: Map) -> Res<PagingOptions> {
    let mut style = Map::new();
    let (mut items, mut query, mut headers, mut max_pages) = (None, Vec::new(), Vec::new(), None);
    for (key, value) in map {
        match key.as_str() {
            "items" => items = Some(value.into_string().map_err(|t| format!("items must be text, not {t}"))?),
            "query" => query = pairs(value, "query")?,
            "headers" => headers = pairs(value, "headers")?,
            "max_pages" => {
                let n = value.as_int().map_err(|t| format!("max_pages must be a number, not {t}"))?;
                max_pages = Some(u32::try_from(n).ok().filter(|n| *n > 0).ok_or("max_pages must be at least 1")?);
            }
            _ => {
                style.insert(key, value);
            }
        }
    }
    if !style.contains_key("style") {
        return Err(format!(
            "get_all needs a paging `style`: page, offset, cursor, next_link or link_header (besides {})",
            PAGING_EXTRAS.join(", ")
        )
        .into());
    }
    let style = dynamic_to_json(&Dynamic::from_map(style)).map_err(|e| format!("get_all paging: {e}"))?;
    let paging: Paging = serde_json::from_value(style).map_err(|e| format!("get_all paging: {e}"))?;
    Ok(PagingOptions { paging, items, query, headers, max_pages })
}

/// An answer as a script sees it.
fn response_map(r: Response) -> Map {
    let mut headers = Map::new();
    for (k, v) in r.headers {
        headers.insert(k.into(), Dynamic::from(v));
    }
    let mut out = Map::new();
    out.insert("status".into(), Dynamic::from_int(i64::from(r.status)));
    out.insert("headers".into(), Dynamic::from_map(headers));
    out.insert("body".into(), if r.body == Value::Null { Dynamic::UNIT } else { json_to_dynamic(&r.body) });
    out
}

/// Text made safe to store and compare: every string in `value` (maps and arrays followed)
/// is [`clean_text`]ed; other values are returned as they are.
pub fn sanitize(value: Dynamic) -> Res<Dynamic> {
    // A value can hold one string many times over (`a[i] = s`): the cleaned copies are counted
    // as they are made, and the run's memory budget stops them.
    if let Some(max) = crate::script::over_budget_here() {
        return Err(format!(
            "api.sanitize: the value takes more memory than the run may hold ([limits] max_run_bytes = {max} bytes)"
        )
        .into());
    }
    if value.is_string() {
        let text = value.into_immutable_string().expect("a string");
        return Ok(Dynamic::from(clean_text(&text)));
    }
    if value.is_map() {
        let map = value.cast::<Map>();
        return map.into_iter().map(|(k, v)| Ok((k, sanitize(v)?))).collect::<Res<Map>>().map(Dynamic::from_map);
    }
    if value.is_array() {
        let items = value.cast::<Array>();
        return items.into_iter().map(sanitize).collect::<Res<Array>>().map(Dynamic::from_array);
    }
    Ok(value)
}

/// Trimmed, whitespace runs (tabs and line breaks included) folded to one space, other
/// control characters and invisible format characters (zero-width spaces, byte order marks,
/// which copy and paste brings into HR data) dropped.
pub fn clean_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            space = !out.is_empty();
        } else if c.is_control() || matches!(c, '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}' | '\u{AD}') {
            continue;
        } else {
            if space {
                out.push(' ');
                space = false;
            }
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_text_trims_folds_and_drops_invisible_characters() {
        assert_eq!(clean_text("  Ann \t\r\n Lee  "), "Ann Lee");
        assert_eq!(clean_text("Sa\u{0007}les\u{200B}"), "Sales");
        assert_eq!(clean_text("\u{FEFF}E1001\u{0000}"), "E1001");
        assert_eq!(clean_text("Zoë\u{00A0}Müller"), "Zoë Müller");
        assert_eq!(clean_text(""), "");
    }

    #[test]
    fn sanitize_follows_maps_and_arrays_and_keeps_other_values() {
        let mut inner = Map::new();
        inner.insert("Email".into(), Dynamic::from(" A@X.COM\n"));
        inner.insert("Active".into(), Dynamic::FALSE);
        inner.insert("Tags".into(), Dynamic::from_array(vec![Dynamic::from(" a "), Dynamic::from_int(3)]));
        let out = sanitize(Dynamic::from_map(inner)).unwrap().cast::<Map>();
        assert_eq!(out["Email"].clone().into_string().unwrap(), "A@X.COM");
        assert!(!out["Active"].as_bool().unwrap());
        let tags = out["Tags"].clone().cast::<Array>();
        assert_eq!(tags[0].clone().into_string().unwrap(), "a");
        assert_eq!(tags[1].as_int().unwrap(), 3);
    }

    #[test]
    fn request_options_are_checked_with_suggestions() {
        let mut query = Map::new();
        query.insert("page".into(), Dynamic::from_int(2));
        query.insert("tag".into(), Dynamic::from_array(vec![Dynamic::from("a"), Dynamic::from("b")]));
        query.insert("skip".into(), Dynamic::UNIT);
        let mut options = Map::new();
        options.insert("query".into(), Dynamic::from_map(query));
        options.insert("allow_error".into(), Dynamic::TRUE);
        let o = request_options(options).unwrap();
        assert!(o.allow_error_status);
        assert_eq!(o.query, [("page", "2"), ("tag", "a"), ("tag", "b")].map(|(k, v)| (k.into(), v.into())));

        let mut typo = Map::new();
        typo.insert("header".into(), Dynamic::from_map(Map::new()));
        let e = request_options(typo).unwrap_err().to_string();
        assert!(e.contains("`header` is not a request option; did you mean `headers`?"), "{e}");
    }

    #[test]
    fn paging_maps_split_into_style_and_extras() {
        let mut m = Map::new();
        m.insert("style".into(), Dynamic::from("page"));
        m.insert("size_param".into(), Dynamic::from("pageSize"));
        m.insert("size".into(), Dynamic::from_int(50));
        m.insert("total_pages".into(), Dynamic::from("totalPages"));
        m.insert("items".into(), Dynamic::from("users"));
        m.insert("max_pages".into(), Dynamic::from_int(7));
        let o = paging_options(m).unwrap();
        assert_eq!(o.items.as_deref(), Some("users"));
        assert_eq!(o.max_pages, Some(7));
        assert!(matches!(o.paging, Paging::Page { size: Some(50), .. }));

        let e = paging_options(Map::new()).unwrap_err().to_string();
        assert!(e.contains("get_all needs a paging `style`"), "{e}");
        let mut bad = Map::new();
        bad.insert("style".into(), Dynamic::from("page"));
        bad.insert("page_parm".into(), Dynamic::from("p"));
        let e = paging_options(bad).unwrap_err().to_string();
        assert!(e.contains("unknown field `page_parm`"), "{e}");
    }
}
