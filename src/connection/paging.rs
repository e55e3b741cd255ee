//! `get_all`: following a paged API to its last page.
//!
//! The paging styles of the APIs tripline talks to: a page number and size (Flex HR's
//! `page`/`pageSize`/`totalPages`, HaloITSM's `page_no`/`page_size`), offset and limit, a
//! cursor or a next link in the body, and the RFC 8288 `Link` header.
//!
//! Nothing may be lost: many servers cap the page size below the one asked for (HaloITSM,
//! Graph, most HR APIs), so when the answers carry a total (`total_pages`, `total_items`) the
//! total decides when the list ends, and a short page does not end it. An empty page before
//! the total is reached, a total that shrinks while the list is read (items would shift past
//! the pages already read), or a list that ends short of its total is an error naming the
//! page, never a partial list. Without a total, a page shorter than the size asked for is the
//! last (the server is assumed to honour the size), and a cursor or next link is followed
//! until the answer has none. More than `max_pages` pages is an error too.

use serde::Deserialize;
use serde_json::Value;
use tracing::debug;
use url::Url;

use super::{Connection, ConnectionError, RequestOptions, Response};
use crate::class::Class;

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
        /// Where the body says how many items there are: the end must have them all.
        #[serde(default)]
        total_items: Option<String>,
    },
    /// A URL of the next page in the body (absolute or relative).
    NextLink {
        /// Where the body holds it (`next`, `links.next`, `@odata.nextLink`).
        next: String,
        /// Where the body says how many items there are (`@odata.count`): the end must have
        /// them all.
        #[serde(default)]
        total_items: Option<String>,
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
        self.get_all_until(path, options, None).await
    }

    /// [`Connection::get_all`], no page, rate-limit wait or backoff going past `deadline`.
    pub async fn get_all_until(
        &self,
        path: &str,
        options: PagingOptions,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Vec<Value>, ConnectionError> {
        let max_pages = options.max_pages.unwrap_or(self.max_pages).max(1);
        let start = self.resolve(path, &options.query)?;
        let fail = |fault: Fault| ConnectionError::Paging {
            connection: self.name.clone(),
            path: start.path().to_string(),
            message: fault.message,
            class: fault.class,
        };
        let request = RequestOptions { headers: options.headers.clone(), deadline, ..RequestOptions::default() };
        let mut url = first_url(&options.paging, &start);
        let mut all = Vec::new();
        let mut progress = Progress::default();
        loop {
            let response = self.send(reqwest::Method::GET, url.clone(), &request).await?;
            let page = progress.pages + 1;
            let items = take_items(response.body.clone(), options.items.as_deref())
                .map_err(|m| fail(Fault::bad(format!("page {page}: {m}"))))?;
            let count = items.len();
            all.extend(items);
            let next = next_url(&options.paging, &url, &mut progress, count, &response).map_err(fail)?;
            debug!(connection = %self.name, path = url.path(), page, items = count, more = next.is_some(), "Page read.");
            let Some(next) = next else { break };
            // A next link comes from the answer: it is checked like any path before it carries
            // the credentials.
            self.check_origin(&next, || format!("the next page link of page {page}"))?;
            if progress.pages >= max_pages {
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

/// Why reading pages stopped short, and whether a later try may read the list whole.
#[derive(Debug)]
struct Fault {
    message: String,
    class: Class,
}

impl Fault {
    /// The answers do not fit the paging settings, or contradict themselves.
    fn bad(message: String) -> Fault {
        Fault { message, class: Class::Permanent }
    }

    /// The list changed while it was read; read again later, it is likely whole.
    fn shifted(message: String) -> Fault {
        Fault { message, class: Class::Transient }
    }
}

/// What the pages read so far said.
#[derive(Debug, Default)]
struct Progress {
    pages: u32,
    items: u64,
    /// The last total each answer gave, to see it change.
    total_pages: Option<u64>,
    total_items: Option<u64>,
}

impl Progress {
    /// Reads a total from this page's body (`None` when the style has none). A configured
    /// total the first page does not give is an error; a later page that leaves it out
    /// keeps the last one. A total that shrinks is an error: items have moved to pages
    /// already read, and would be skipped.
    fn total(&mut self, body: &Value, key: &Option<String>, pages: bool) -> Result<Option<u64>, Fault> {
        let Some(key) = key else { return Ok(None) };
        let page = self.pages;
        let last = if pages { self.total_pages } else { self.total_items };
        let now = match lookup(body, key) {
            None | Some(Value::Null) => match last {
                Some(last) => last,
                None => {
                    return Err(Fault::bad(format!(
                        "page {page} does not say `{key}`; check the paging settings (without a total, leave it out)"
                    )))
                }
            },
            Some(v) => as_count(v).ok_or_else(|| Fault::bad(format!("page {page}: `{key}` is not a number: {v}")))?,
        };
        if let Some(last) = last.filter(|last| now < *last) {
            return Err(Fault::shifted(format!(
                "page {page} says `{key}` is {now}, the page before said {last}: the list changed while it was \
                 read and items would be skipped; it is read again later"
            )));
        }
        if pages {
            self.total_pages = Some(now);
        } else {
            self.total_items = Some(now);
        }
        Ok(Some(now))
    }

    /// Whether the items read so far fall short of `total_items` at the end of the list.
    fn short_of(&self, total_items: Option<u64>) -> Result<(), Fault> {
        match total_items {
            Some(total) if self.items < total => Err(Fault::bad(format!(
                "the list ended after page {} with {} items, but the answers say there are {total}",
                self.pages, self.items
            ))),
            _ => Ok(()),
        }
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

/// The next page's URL, or `None` after the last page; `progress` is updated with the page
/// just read (`count` items, `response`).
fn next_url(
    paging: &Paging,
    current: &Url,
    progress: &mut Progress,
    count: usize,
    response: &Response,
) -> Result<Option<Url>, Fault> {
    progress.pages += 1;
    progress.items += count as u64;
    let page = progress.pages;
    let body = &response.body;
    // With a total: it decides, and an empty page before it is reached is a contradiction.
    let by_total = |more: bool, what: String| -> Result<bool, Fault> {
        if more && count == 0 {
            return Err(Fault::bad(format!(
                "page {page} is empty, but {what}; the API's pages and its total disagree"
            )));
        }
        Ok(more)
    };
    Ok(match paging {
        Paging::Page { page_param, size, first, total_pages, total_items, .. } => {
            let pages_total = progress.total(body, total_pages, true)?;
            let items_total = progress.total(body, total_items, false)?;
            let more = match (pages_total, items_total) {
                (Some(pages), _) => by_total(u64::from(page) < pages, format!("there are {pages} pages"))?,
                (None, Some(items)) => {
                    by_total(progress.items < items, format!("{} items of {items} were read", progress.items))?
                }
                (None, None) => count > 0 && !size.is_some_and(|size| (count as u64) < size),
            };
            if !more {
                progress.short_of(items_total)?;
                None
            } else {
                let mut url = current.clone();
                set_query(&mut url, page_param, &(first + u64::from(page)).to_string());
                Some(url)
            }
        }
        Paging::Offset { offset_param, limit, total_items, .. } => {
            let more = match progress.total(body, total_items, false)? {
                Some(items) => {
                    by_total(progress.items < items, format!("{} items of {items} were read", progress.items))?
                }
                None => count > 0 && (count as u64) >= *limit,
            };
            if !more {
                None
            } else {
                let offset = query_value(current, offset_param).and_then(|o| o.parse::<u64>().ok()).unwrap_or(0);
                let mut url = current.clone();
                set_query(&mut url, offset_param, &(offset + count as u64).to_string());
                Some(url)
            }
        }
        Paging::Cursor { cursor_param, cursor, total_items } => {
            let items_total = progress.total(body, total_items, false)?;
            let next = match lookup(body, cursor) {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if s.is_empty() => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                Some(other) => {
                    return Err(Fault::bad(format!("page {page}: the cursor `{cursor}` is not a string: {other}")))
                }
            };
            match next {
                None => {
                    progress.short_of(items_total)?;
                    None
                }
                Some(next) => {
                    let mut url = current.clone();
                    set_query(&mut url, cursor_param, &next);
                    Some(url)
                }
            }
        }
        Paging::NextLink { next, total_items } => {
            let items_total = progress.total(body, total_items, false)?;
            let link = match lookup(body, next) {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if s.is_empty() => None,
                Some(Value::String(s)) => Some(
                    current.join(s).map_err(|e| Fault::bad(format!("page {page}: the next link is not a URL: {e}")))?,
                ),
                Some(other) => {
                    return Err(Fault::bad(format!("page {page}: the next link `{next}` is not a string: {other}")))
                }
            };
            if link.is_none() {
                progress.short_of(items_total)?;
            }
            link
        }
        Paging::LinkHeader => match response.headers.get("link").and_then(|h| link_next(h)) {
            None => None,
            Some(target) => Some(
                current
                    .join(&target)
                    .map_err(|e| Fault::bad(format!("page {page}: the Link header's next is not a URL: {e}")))?,
            ),
        },
    })
    .map(|next| next.filter(|n| n != current))
    .and_then(|next| match (&next, paging) {
        // A cursor or link that points at the page just read would be read forever.
        (None, Paging::Cursor { .. } | Paging::NextLink { .. } | Paging::LinkHeader)
            if lookup_next_exists(paging, response) =>
        {
            Err(Fault::bad(format!("page {page} names itself as the next page")))
        }
        _ => Ok(next),
    })
}

/// Whether the answer names a next page at all (to tell "no next page" from "the same page").
fn lookup_next_exists(paging: &Paging, response: &Response) -> bool {
    let present = |v: Option<&Value>| match v {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(_) => true,
    };
    match paging {
        Paging::Cursor { cursor, .. } => present(lookup(&response.body, cursor)),
        Paging::NextLink { next, .. } => present(lookup(&response.body, next)),
        Paging::LinkHeader => response.headers.get("link").and_then(|h| link_next(h)).is_some(),
        Paging::Page { .. } | Paging::Offset { .. } => false,
    }
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

    /// Reads one page: `next_url` with `count` items and `body`.
    fn read(
        paging: &Paging,
        at: &Url,
        progress: &mut Progress,
        count: usize,
        body: Value,
    ) -> Result<Option<Url>, Fault> {
        next_url(paging, at, progress, count, &response(body))
    }

    #[test]
    fn page_numbers_follow_total_pages_even_past_short_pages() {
        let paging: Paging = serde_json::from_value(json!({
            "style": "page", "size_param": "pageSize", "size": 100, "total_pages": "totalPages"
        }))
        .unwrap();
        let first = first_url(&paging, &url("https://x/users?instanceId=A"));
        assert_eq!(first.as_str(), "https://x/users?instanceId=A&page=1&pageSize=100");
        let mut p = Progress::default();
        // The server caps pages at 2 while 100 were asked for: the total decides.
        let second = read(&paging, &first, &mut p, 2, json!({"users": [1, 2], "totalPages": 3})).unwrap().unwrap();
        assert_eq!(second.as_str(), "https://x/users?instanceId=A&pageSize=100&page=2");
        let third = read(&paging, &second, &mut p, 2, json!({"totalPages": 3})).unwrap().unwrap();
        assert_eq!(query_value(&third, "page").as_deref(), Some("3"));
        assert_eq!(read(&paging, &third, &mut p, 1, json!({"totalPages": 3})).unwrap(), None);

        // An empty page before the total, a shrinking total, a total that is not a number or
        // missing from the first page: errors naming the page.
        let mut p = Progress::default();
        read(&paging, &first, &mut p, 2, json!({"totalPages": 3})).unwrap();
        let e = read(&paging, &second, &mut p, 0, json!({"totalPages": 3})).unwrap_err();
        assert!(e.message.contains("page 2 is empty, but there are 3 pages"), "{e:?}");
        assert_eq!(e.class, Class::Permanent);
        let mut p = Progress::default();
        read(&paging, &first, &mut p, 2, json!({"totalPages": 3})).unwrap();
        let e = read(&paging, &second, &mut p, 2, json!({"totalPages": 2})).unwrap_err();
        assert!(e.message.contains("page 2 says `totalPages` is 2, the page before said 3"), "{e:?}");
        assert_eq!(e.class, Class::Transient);
        let e = read(&paging, &first, &mut Progress::default(), 2, json!({"totalPages": "many"})).unwrap_err();
        assert!(e.message.contains("page 1: `totalPages` is not a number"), "{e:?}");
        let e = read(&paging, &first, &mut Progress::default(), 2, json!({"users": []})).unwrap_err();
        assert!(e.message.contains("page 1 does not say `totalPages`"), "{e:?}");
        // A later page without the total keeps the last one; a growing total is followed.
        let mut p = Progress::default();
        read(&paging, &first, &mut p, 2, json!({"totalPages": 2})).unwrap();
        assert!(read(&paging, &second, &mut p, 2, json!({})).unwrap().is_none());
        let mut p = Progress::default();
        read(&paging, &first, &mut p, 2, json!({"totalPages": 2})).unwrap();
        assert!(read(&paging, &second, &mut p, 2, json!({"totalPages": 3})).unwrap().is_some());
    }

    #[test]
    fn without_a_total_a_short_page_is_the_last() {
        let paging: Paging =
            serde_json::from_value(json!({"style": "page", "size_param": "pageSize", "size": 2})).unwrap();
        let first = first_url(&paging, &url("https://x/users"));
        let mut p = Progress::default();
        assert!(read(&paging, &first, &mut p, 2, json!({})).unwrap().is_some());
        assert_eq!(read(&paging, &first, &mut p, 1, json!({})).unwrap(), None);
        let mut p = Progress::default();
        assert_eq!(read(&paging, &first, &mut p, 0, json!({})).unwrap(), None);
    }

    #[test]
    fn a_total_of_items_decides_and_the_end_must_reach_it() {
        let paging = Paging::Page {
            page_param: "page_no".into(),
            size_param: Some("page_size".into()),
            size: Some(50),
            first: 1,
            total_pages: None,
            total_items: Some("record_count".into()),
        };
        let first = first_url(&paging, &url("https://x/Users"));
        let mut p = Progress::default();
        let second = read(&paging, &first, &mut p, 2, json!({"record_count": 5})).unwrap().unwrap();
        let third = read(&paging, &second, &mut p, 2, json!({"record_count": 5})).unwrap().unwrap();
        assert_eq!(read(&paging, &third, &mut p, 1, json!({"record_count": 5})).unwrap(), None);
        let mut p = Progress::default();
        read(&paging, &first, &mut p, 2, json!({"record_count": 5})).unwrap();
        let e = read(&paging, &second, &mut p, 0, json!({"record_count": 5})).unwrap_err();
        assert!(e.message.contains("page 2 is empty, but 2 items of 5 were read"), "{e:?}");

        // Both totals: the pages end the list, and the items must be all there.
        let both = Paging::Page {
            page_param: "page".into(),
            size_param: None,
            size: None,
            first: 1,
            total_pages: Some("pages".into()),
            total_items: Some("total".into()),
        };
        let mut p = Progress::default();
        let e = read(&both, &first, &mut p, 2, json!({"pages": 1, "total": 3})).unwrap_err();
        assert!(
            e.message.contains("the list ended after page 1 with 2 items, but the answers say there are 3"),
            "{e:?}"
        );
    }

    #[test]
    fn offsets_advance_by_what_was_read() {
        let paging = Paging::Offset {
            offset_param: "offset".into(),
            limit_param: "limit".into(),
            limit: 10,
            total_items: Some("total".into()),
        };
        let first = first_url(&paging, &url("https://x/items"));
        assert_eq!(first.as_str(), "https://x/items?offset=0&limit=10");
        let r = json!({"total": 5});
        let mut p = Progress::default();
        // Capped at 2 of the 10 asked for: the offset moves by what came.
        let second = read(&paging, &first, &mut p, 2, r.clone()).unwrap().unwrap();
        assert_eq!(second.as_str(), "https://x/items?limit=10&offset=2");
        let third = read(&paging, &second, &mut p, 2, r.clone()).unwrap().unwrap();
        assert_eq!(query_value(&third, "offset").as_deref(), Some("4"));
        assert_eq!(read(&paging, &third, &mut p, 1, r.clone()).unwrap(), None);
        let mut p = Progress::default();
        read(&paging, &first, &mut p, 2, r.clone()).unwrap();
        let e = read(&paging, &second, &mut p, 0, r).unwrap_err();
        assert!(e.message.contains("page 2 is empty, but 2 items of 5 were read"), "{e:?}");

        let untotalled =
            Paging::Offset { offset_param: "offset".into(), limit_param: "limit".into(), limit: 2, total_items: None };
        let mut p = Progress::default();
        assert!(read(&untotalled, &first, &mut p, 2, json!([])).unwrap().is_some());
        assert_eq!(read(&untotalled, &first, &mut p, 1, json!([])).unwrap(), None);
    }

    #[test]
    fn cursors_and_links_are_followed_past_empty_pages_but_not_in_circles() {
        let paging = Paging::Cursor { cursor_param: "after".into(), cursor: "next".into(), total_items: None };
        let first = first_url(&paging, &url("https://x/people"));
        let mut p = Progress::default();
        let second = read(&paging, &first, &mut p, 0, json!({"next": "c2"})).unwrap().unwrap();
        assert_eq!(query_value(&second, "after").as_deref(), Some("c2"));
        let e = read(&paging, &second, &mut p, 1, json!({"next": "c2"})).unwrap_err();
        assert!(e.message.contains("page 2 names itself as the next page"), "{e:?}");

        let counted = Paging::NextLink { next: "next".into(), total_items: Some("@odata.count".into()) };
        let mut p = Progress::default();
        let next =
            read(&counted, &first, &mut p, 2, json!({"next": "/people?skip=2", "@odata.count": 4})).unwrap().unwrap();
        assert_eq!(next.as_str(), "https://x/people?skip=2");
        let e = read(&counted, &next, &mut p, 1, json!({"@odata.count": 4})).unwrap_err();
        assert!(
            e.message.contains("the list ended after page 2 with 3 items, but the answers say there are 4"),
            "{e:?}"
        );
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
