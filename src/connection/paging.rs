//! `get_all`: following a paged API to its last page.
//!
//! The paging styles of the APIs tripline talks to: a page number and size (Flex HR's
//! `page`/`pageSize`/`totalPages`, HaloITSM's `page_no`/`page_size`), offset and limit, a
//! cursor or a next link in the body, and the RFC 8288 `Link` header. Reading stops at an
//! empty page or when the style says there is no more; reading more than `max_pages` pages is
//! an error, never a silently partial list.

use serde::Deserialize;
use serde_json::Value;
use tracing::debug;
use url::Url;

use super::{Connection, ConnectionError, RequestOptions, Response};

/// How a paged API says there is more.
///
/// Deserializable (tagged by `style`) so the script binding can take it from a map:
/// `#{ style: "page", page_param: "page", size_param: "pageSize", size: 100, total_pages: "totalPages" }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "style", rename_all = "snake_case", deny_unknown_fields)]
pub enum Paging {
    /// A page number, counted from `first`, and optionally a page size.
    Page {
        #[serde(default = "page_param")]
        page_param: String,
        /// The query parameter for the page size, sent when `size` is given.
        #[serde(default)]
        size_param: Option<String>,
        #[serde(default)]
        size: Option<u64>,
        /// The number of the first page (1 unless the API counts from 0).
        #[serde(default = "first_page")]
        first: u64,
        /// Where the body says how many pages there are (`totalPages`).
        #[serde(default)]
        total_pages: Option<String>,
        /// Where the body says how many items there are (`record_count`).
        #[serde(default)]
        total_items: Option<String>,
    },
    /// An item offset and a page size.
    Offset {
        #[serde(default = "offset_param")]
        offset_param: String,
        #[serde(default = "limit_param")]
        limit_param: String,
        limit: u64,
        #[serde(default)]
        total_items: Option<String>,
    },
    /// An opaque cursor from the body, sent back as a query parameter.
    Cursor {
        /// The query parameter that carries it.
        cursor_param: String,
        /// Where the body holds the next cursor (`meta.next_cursor`); absent, null or empty
        /// at the end.
        cursor: String,
    },
    /// A URL of the next page in the body (absolute or relative).
    NextLink {
        /// Where the body holds it (`next`, `links.next`, `@odata.nextLink`).
        next: String,
    },
    /// The `rel="next"` URL of the `Link` header (RFC 8288).
    LinkHeader,
}

fn page_param() -> String {
    "page".into()
}

fn first_page() -> u64 {
    1
}

fn offset_param() -> String {
    "offset".into()
}

fn limit_param() -> String {
    "limit".into()
}

/// What `get_all` reads.
#[derive(Debug, Clone)]
pub struct PagingOptions {
    pub paging: Paging,
    /// Where each page's items are (`users`, `data.items`); the whole body when `None`, which
    /// must then be an array.
    pub items: Option<String>,
    /// Query parameters for every page (besides the paging ones).
    pub query: Vec<(String, String)>,
    /// Extra headers for every page.
    pub headers: Vec<(String, String)>,
    /// Overrides the connection's `max_pages`.
    pub max_pages: Option<u32>,
}

impl PagingOptions {
    pub fn new(paging: Paging) -> Self {
        Self { paging, items: None, query: Vec::new(), headers: Vec::new(), max_pages: None }
    }

    /// Reads the items from this key of each page (dotted for nested keys).
    pub fn items(mut self, key: impl Into<String>) -> Self {
        self.items = Some(key.into());
        self
    }

    /// Adds a query parameter to every page.
    pub fn query(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.query.push((name.into(), value.into()));
        self
    }
}

impl Connection {
    /// GETs `path` page after page and returns the items of all pages in order.
    pub async fn get_all(&self, path: &str, options: PagingOptions) -> Result<Vec<Value>, ConnectionError> {
        let max_pages = options.max_pages.unwrap_or(self.max_pages).max(1);
        let start = self.resolve(path, &options.query)?;
        let fail = |message: String| ConnectionError::Paging {
            connection: self.name.clone(),
            path: start.path().to_string(),
            message,
        };
        let request = RequestOptions { headers: options.headers.clone(), ..RequestOptions::default() };
        let mut url = first_url(&options.paging, &start);
        let mut all = Vec::new();
        let mut pages = 0u32;
        loop {
            let response = self.send(reqwest::Method::GET, url.clone(), &request).await?;
            pages += 1;
            let items = take_items(response.body.clone(), options.items.as_deref()).map_err(fail)?;
            let count = items.len();
            all.extend(items);
            let next = next_url(&options.paging, &url, pages, all.len(), count, &response).map_err(fail)?;
            debug!(connection = %self.name, path = url.path(), page = pages, items = count, more = next.is_some(), "Page read.");
            let Some(next) = next else { break };
            if next.origin() != self.base_url.origin() {
                return Err(fail(format!(
                    "the next page is on another host ({}); credentials are not sent there",
                    next.origin().ascii_serialization()
                )));
            }
            if pages >= max_pages {
                return Err(ConnectionError::TooManyPages {
                    connection: self.name.clone(),
                    path: start.path().to_string(),
                    max_pages,
                });
            }
            url = next;
        }
        Ok(all)
    }
}

/// The first page's URL: the paging parameters set to their start.
fn first_url(paging: &Paging, start: &Url) -> Url {
    let mut url = start.clone();
    match paging {
        Paging::Page { page_param, size_param, size, first, .. } => {
            set_query(&mut url, page_param, &first.to_string());
            if let (Some(param), Some(size)) = (size_param, size) {
                set_query(&mut url, param, &size.to_string());
            }
        }
        Paging::Offset { offset_param, limit_param, limit, .. } => {
            set_query(&mut url, offset_param, "0");
            set_query(&mut url, limit_param, &limit.to_string());
        }
        Paging::Cursor { .. } | Paging::NextLink { .. } | Paging::LinkHeader => {}
    }
    url
}

/// The next page's URL, or `None` after the last page.
///
/// `pages` pages have been read, `so_far` items in all, `count` on the page just read.
fn next_url(
    paging: &Paging,
    current: &Url,
    pages: u32,
    so_far: usize,
    count: usize,
    response: &Response,
) -> Result<Option<Url>, String> {
    if count == 0 {
        return Ok(None);
    }
    let body = &response.body;
    let reached = |key: &Option<String>, have: u64| -> Result<bool, String> {
        match key {
            None => Ok(false),
            Some(key) => match lookup(body, key) {
                None | Some(Value::Null) => Ok(false),
                Some(v) => {
                    as_count(v).map(|total| have >= total).ok_or_else(|| format!("`{key}` is not a number: {v}"))
                }
            },
        }
    };
    Ok(match paging {
        Paging::Page { page_param, size, first, total_pages, total_items, .. } => {
            if reached(total_pages, u64::from(pages))?
                || reached(total_items, so_far as u64)?
                || size.is_some_and(|size| (count as u64) < size)
            {
                None
            } else {
                let mut url = current.clone();
                set_query(&mut url, page_param, &(first + u64::from(pages)).to_string());
                Some(url)
            }
        }
        Paging::Offset { offset_param, limit, total_items, .. } => {
            if reached(total_items, so_far as u64)? || (count as u64) < *limit {
                None
            } else {
                let offset = query_value(current, offset_param).and_then(|o| o.parse::<u64>().ok()).unwrap_or(0);
                let mut url = current.clone();
                set_query(&mut url, offset_param, &(offset + count as u64).to_string());
                Some(url)
            }
        }
        Paging::Cursor { cursor_param, cursor } => match lookup(body, cursor) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => {
                let mut url = current.clone();
                set_query(&mut url, cursor_param, s);
                Some(url)
            }
            Some(Value::Number(n)) => {
                let mut url = current.clone();
                set_query(&mut url, cursor_param, &n.to_string());
                Some(url)
            }
            Some(other) => return Err(format!("the cursor `{cursor}` is not a string: {other}")),
        },
        Paging::NextLink { next } => match lookup(body, next) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => {
                Some(current.join(s).map_err(|e| format!("the next link `{s}` is not a URL: {e}"))?)
            }
            Some(other) => return Err(format!("the next link `{next}` is not a string: {other}")),
        },
        Paging::LinkHeader => match response.headers.get("link") {
            None => None,
            Some(header) => match link_next(header) {
                None => None,
                Some(target) => Some(
                    current
                        .join(&target)
                        .map_err(|e| format!("the Link header's next `{target}` is not a URL: {e}"))?,
                ),
            },
        },
    })
}

/// The items of one page.
fn take_items(body: Value, key: Option<&str>) -> Result<Vec<Value>, String> {
    let found = match key {
        None => body,
        Some(key) => match lookup(&body, key) {
            Some(v) => v.clone(),
            None => {
                return Err(match &body {
                    Value::Object(map) => format!(
                        "the answer has no `{key}` (its keys: {})",
                        map.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                    _ => format!("the answer is not an object with `{key}`"),
                })
            }
        },
    };
    match found {
        Value::Array(items) => Ok(items),
        Value::Null => Ok(Vec::new()),
        Value::Object(map) if key.is_none() => Err(format!(
            "the answer is an object; say which key holds the items with `items` (its keys: {})",
            map.keys().cloned().collect::<Vec<_>>().join(", ")
        )),
        other => Err(format!(
            "the items are not a list but {}",
            match other {
                Value::Object(_) => "an object",
                Value::String(_) => "text",
                _ => "a single value",
            }
        )),
    }
}

/// `a.b.0.c` in a JSON value; a key that itself holds dots (`@odata.nextLink`) is found
/// whole first.
pub(crate) fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    if let Some(v) = value.as_object().and_then(|m| m.get(path)) {
        return Some(v);
    }
    let mut current = value;
    for segment in path.split('.') {
        current = match current {
            Value::Object(map) => map.get(segment)?,
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(current)
}

fn as_count(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| n.as_f64().map(|f| f.max(0.0) as u64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn query_value(url: &Url, name: &str) -> Option<String> {
    url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// Sets `name` to `value`, replacing any earlier value, keeping the other parameters.
fn set_query(url: &mut Url, name: &str, value: &str) {
    let kept: Vec<(String, String)> =
        url.query_pairs().filter(|(k, _)| k != name).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let mut pairs = url.query_pairs_mut();
    pairs.clear();
    for (k, v) in &kept {
        pairs.append_pair(k, v);
    }
    pairs.append_pair(name, value);
}

/// The target of the first link with relation type `next` in a `Link` header value
/// (RFC 8288): `<https://x/y?page=2>; rel="next", <...>; rel="last"`.
pub(crate) fn link_next(header: &str) -> Option<String> {
    let mut rest = header;
    loop {
        let open = rest.find('<')?;
        let close = open + rest[open..].find('>')?;
        let target = &rest[open + 1..close];
        rest = &rest[close + 1..];
        // The parameters run to the next link, which starts with `<` after a comma outside
        // quotes.
        let mut in_quotes = false;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            match c {
                '"' => in_quotes = !in_quotes,
                '<' if !in_quotes => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        let params = &rest[..end];
        let is_next = params.split(';').any(|param| {
            let Some((name, value)) = param.split_once('=') else {
                return false;
            };
            name.trim().eq_ignore_ascii_case("rel")
                && value
                    .trim()
                    .trim_end_matches(',')
                    .trim()
                    .trim_matches('"')
                    .split_ascii_whitespace()
                    .any(|rel| rel.eq_ignore_ascii_case("next"))
        });
        if is_next {
            return Some(target.trim().to_string());
        }
        rest = &rest[end..];
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;

    fn response(body: Value) -> Response {
        Response { status: 200, headers: BTreeMap::new(), body }
    }

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn link_header_next() {
        assert_eq!(
            link_next(r#"<https://x/u?page=2>; rel="next", <https://x/u?page=9>; rel="last""#),
            Some("https://x/u?page=2".into())
        );
        assert_eq!(
            link_next(r#"<https://x/u?page=1>; rel="prev"; title="a, <b>", <https://x/u?page=3>; rel="last next""#),
            Some("https://x/u?page=3".into())
        );
        assert_eq!(link_next(r#"</u?page=4>;rel=next"#), Some("/u?page=4".into()));
        assert_eq!(link_next(r#"<https://x/u?page=9>; rel="last""#), None);
        assert_eq!(link_next("garbage"), None);
    }

    #[test]
    fn lookup_paths() {
        let v = json!({"a": {"b": [{"c": 1}]}, "@odata.nextLink": "n"});
        assert_eq!(lookup(&v, "a.b.0.c"), Some(&json!(1)));
        assert_eq!(lookup(&v, "@odata.nextLink"), Some(&json!("n")));
        assert_eq!(lookup(&v, "a.x"), None);
    }

    #[test]
    fn page_numbers_stop_at_total_pages_or_a_short_page() {
        let paging: Paging = serde_json::from_value(json!({
            "style": "page", "size_param": "pageSize", "size": 2, "total_pages": "totalPages"
        }))
        .unwrap();
        let first = first_url(&paging, &url("https://x/users?instanceId=A"));
        assert_eq!(first.as_str(), "https://x/users?instanceId=A&page=1&pageSize=2");
        let body = json!({"users": [1, 2], "page": 1, "totalPages": 3});
        let next = next_url(&paging, &first, 1, 2, 2, &response(body)).unwrap().unwrap();
        assert_eq!(next.as_str(), "https://x/users?instanceId=A&pageSize=2&page=2");
        let body = json!({"users": [5, 6], "page": 3, "totalPages": 3});
        assert_eq!(next_url(&paging, &next, 3, 6, 2, &response(body)).unwrap(), None);
        let body = json!({"users": [5]});
        assert_eq!(next_url(&paging, &next, 2, 3, 1, &response(body)).unwrap(), None);
        let body = json!({"users": [5, 6], "totalPages": "many"});
        assert!(next_url(&paging, &next, 2, 4, 2, &response(body)).is_err());
    }

    #[test]
    fn offsets_advance_by_what_was_read() {
        let paging = Paging::Offset {
            offset_param: "offset".into(),
            limit_param: "limit".into(),
            limit: 2,
            total_items: Some("total".into()),
        };
        let first = first_url(&paging, &url("https://x/items"));
        assert_eq!(first.as_str(), "https://x/items?offset=0&limit=2");
        let r = response(json!({"total": 5}));
        let second = next_url(&paging, &first, 1, 2, 2, &r).unwrap().unwrap();
        assert_eq!(second.as_str(), "https://x/items?limit=2&offset=2");
        let third = next_url(&paging, &second, 2, 4, 2, &r).unwrap().unwrap();
        assert_eq!(query_value(&third, "offset").as_deref(), Some("4"));
        assert_eq!(next_url(&paging, &third, 3, 5, 1, &r).unwrap(), None);
    }

    #[test]
    fn items_need_a_list() {
        assert_eq!(take_items(json!([1, 2]), None).unwrap(), vec![json!(1), json!(2)]);
        assert_eq!(take_items(json!({"data": {"users": [3]}}), Some("data.users")).unwrap(), vec![json!(3)]);
        let e = take_items(json!({"users": [], "page": 1}), None).unwrap_err();
        assert!(e.contains("say which key holds the items") && e.contains("users"), "{e}");
        let e = take_items(json!({"page": 1}), Some("users")).unwrap_err();
        assert!(e.contains("has no `users`"), "{e}");
        assert!(take_items(json!({"users": 3}), Some("users")).is_err());
    }

    #[test]
    fn paging_from_a_script_map_rejects_typos() {
        let e = serde_json::from_value::<Paging>(json!({"style": "page", "page_parm": "p"})).unwrap_err().to_string();
        assert!(e.contains("unknown field `page_parm`"), "{e}");
        let p: Paging = serde_json::from_value(json!({"style": "link_header"})).unwrap();
        assert_eq!(p, Paging::LinkHeader);
    }
}
