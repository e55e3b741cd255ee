//! Look-ups by value that share one search: the Flex HR sync asks the directory, for every
//! person, for the account with an employee ID, the manager's, a free CN and a free logon
//! name. Sent one by one, each costs the server a whole operation; slapd spends about
//! 140 µs on a single indexed equality search and about 13 µs per value on one search for
//! 32 values at once (`(|(employeeNumber=a)(employeeNumber=b)...)`).
//!
//! So look-ups of one kind (the same base, scope, constraint and attributes) go out one
//! search at a time, and those asked for while it is under way wait and go together in the
//! next: a look-up alone is sent at once (no added wait when the server is idle), and under
//! load the look-ups of up to [`MAX_LOOKUPS`] runs share a search.
//!
//! Each entry of the answer is given to the look-ups whose values it holds, compared without
//! case. That is what the server does for the attributes batched ([`BATCHED_ATTRIBUTES`]: all
//! compared without case on Active Directory and OpenLDAP) and for the values batched
//! (printable ASCII without doubled or outer spaces, where matching without case is plain
//! ASCII lower case). Every other look-up, and every batch whose answer is not clear, is
//! searched alone, as it would be without batching:
//! - an entry the server returned that no look-up of the batch claims (the server matched a
//!   value some other way than this file: nothing may be missed, so nothing is guessed);
//! - an answer cut at the batch's size limit (`page_size`), or any error (each look-up then
//!   gets its own answer or error).
//!
//! A look-up whose batch is abandoned (its leader's run reached its deadline) searches alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ldap3::Scope;
use tokio::sync::oneshot;

use super::error::DirectoryError;
use super::filter;
use super::handle::{Directory, Entry};

/// The most look-ups one search answers.
pub(crate) const MAX_LOOKUPS: usize = 32;

/// Attributes every directory kind compares without case (`caseIgnoreMatch` or AD's Unicode
/// string syntax), so that an entry's value answers a look-up when they are equal in lower case.
const BATCHED_ATTRIBUTES: &[&str] =
    &["cn", "uid", "mail", "employeeNumber", "employeeID", "sAMAccountName", "userPrincipalName"];

/// One value a look-up asks for: `attr` equal to `value`, or starting with it (`prefix`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Term {
    pub attr: String,
    pub value: String,
    pub prefix: bool,
}

impl Term {
    pub fn eq(attr: &str, value: &str) -> Term {
        Term { attr: attr.to_string(), value: value.to_string(), prefix: false }
    }

    pub fn prefix(attr: &str, value: &str) -> Term {
        Term { attr: attr.to_string(), value: value.to_string(), prefix: true }
    }

    pub fn filter(&self) -> String {
        match self.prefix {
            true => filter::prefix(&self.attr, &self.value),
            false => filter::eq(&self.attr, &self.value),
        }
    }

    /// Whether the term may share a search: see the module docs.
    fn batchable(&self) -> bool {
        let v = self.value.as_bytes();
        BATCHED_ATTRIBUTES.iter().any(|a| a.eq_ignore_ascii_case(&self.attr))
            && !v.is_empty()
            && v.iter().all(|b| b.is_ascii_graphic() || *b == b' ')
            && v.first() != Some(&b' ')
            && v.last() != Some(&b' ')
            && !self.value.contains("  ")
    }

    /// Whether `entry` holds a value that answers this term (compared without case).
    fn answered_by(&self, entry: &Entry) -> bool {
        let want = self.value.to_ascii_lowercase();
        entry.values(&self.attr).iter().any(|v| {
            let v = v.to_ascii_lowercase();
            match self.prefix {
                true => v.starts_with(&want),
                false => v == want,
            }
        })
    }
}

/// A look-up: the entries under `base` (within `scope`) that match `constraint` and any of
/// `terms`, with `attrs` (all user attributes when empty).
pub(crate) struct Lookup<'a> {
    pub base: &'a str,
    pub scope: Scope,
    pub constraint: Option<&'a str>,
    pub terms: Vec<Term>,
    pub attrs: &'a [&'a str],
    /// At most this many entries (`Directory::search_raw`'s limit); `None`: all of them
    /// (`Directory::search_few`).
    pub limit: Option<usize>,
    /// An absent base gives no entries instead of an error.
    pub missing_base_ok: bool,
}

impl Lookup<'_> {
    /// The look-up's own filter (also that of a batch, given all its terms).
    fn filter(&self, terms: &[&Term]) -> String {
        let any = filter::or(&terms.iter().map(|t| t.filter()).collect::<Vec<_>>());
        match self.constraint {
            Some(c) => filter::and(&[c.to_string(), any]),
            None => any,
        }
    }

    /// What look-ups must share to go in one search.
    fn kind(&self) -> String {
        let scope = match self.scope {
            Scope::Base => 'b',
            Scope::OneLevel => 'o',
            Scope::Subtree => 's',
        };
        format!(
            "{}\u{0}{scope}\u{0}{}\u{0}{}\u{0}{}",
            self.base,
            self.constraint.unwrap_or(""),
            self.attrs.join(","),
            self.missing_base_ok
        )
    }

    /// The attributes a batch asks for: the look-up's, and those its terms are compared on.
    fn batch_attrs(&self) -> Vec<&str> {
        if self.attrs.is_empty() {
            return vec!["*"];
        }
        let mut attrs: Vec<&str> = self.attrs.iter().copied().filter(|a| *a != "1.1").collect();
        for t in &self.terms {
            if !attrs.iter().any(|a| a.eq_ignore_ascii_case(&t.attr)) {
                attrs.push(&t.attr);
            }
        }
        attrs
    }
}

/// Look-ups waiting for a search, by kind.
#[derive(Default)]
pub(crate) struct Batches(Mutex<HashMap<String, Kind>>);

/// One kind's look-ups: one search at a time (`gate`), and the batches that fill meanwhile
/// (a full one waits for its turn as it is), each known by its number.
#[derive(Default)]
struct Kind {
    gate: Arc<tokio::sync::Mutex<()>>,
    open: Vec<(u64, Vec<Waiting>)>,
    next_batch: u64,
}

impl Kind {
    fn take(&mut self, batch: u64) -> Vec<Waiting> {
        match self.open.iter().position(|(id, _)| *id == batch) {
            Some(i) => self.open.remove(i).1,
            None => Vec::new(),
        }
    }
}

/// A look-up in an open batch: its terms, and where its entries go.
struct Waiting {
    terms: Vec<Term>,
    limit: Option<usize>,
    reply: oneshot::Sender<Result<Vec<Entry>, DirectoryError>>,
}

/// Abandons its open batch when the leader is dropped before taking it (its run reached its
/// deadline): the batch's look-ups then search alone.
struct Leading<'a> {
    batches: &'a Batches,
    kind: String,
    batch: u64,
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        let mut table = self.batches.table();
        if let Some(k) = table.get_mut(&self.kind) {
            k.take(self.batch);
        }
    }
}

impl Batches {
    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Kind>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The entries for each look-up of a batch, or `None` when an entry answers none of them.
fn share(entries: Vec<Entry>, waiting: &[Waiting]) -> Option<Vec<Vec<Entry>>> {
    let mut out: Vec<Vec<Entry>> = waiting.iter().map(|_| Vec::new()).collect();
    for entry in entries {
        let mut claimed = false;
        for (w, found) in waiting.iter().zip(out.iter_mut()) {
            if w.terms.iter().any(|t| t.answered_by(&entry)) {
                claimed = true;
                if w.limit.is_none_or(|l| found.len() < l) {
                    found.push(entry.clone());
                }
            }
        }
        if !claimed {
            return None;
        }
    }
    Some(out)
}

impl Directory {
    /// The entries of a look-up, searched with others of its kind when they are asked for at
    /// the same time (see the module docs); the same entries as [`Directory::search_alone`].
    pub(crate) async fn find(&self, q: Lookup<'_>) -> Result<Vec<Entry>, DirectoryError> {
        if self.is_dry_run() {
            return Ok(Vec::new());
        }
        if !q.terms.iter().all(Term::batchable) {
            return self.search_alone(&q).await;
        }
        let kind = q.kind();
        let (rx, lead) = {
            let mut table = self.batches.table();
            let k = table.entry(kind.clone()).or_default();
            let (tx, rx) = oneshot::channel();
            let me = Waiting { terms: q.terms.clone(), limit: q.limit, reply: tx };
            match k.open.last_mut() {
                Some((_, waiting)) if waiting.len() < MAX_LOOKUPS => {
                    waiting.push(me);
                    (rx, None)
                }
                _ => {
                    // A new batch, led by this look-up.
                    k.next_batch += 1;
                    k.open.push((k.next_batch, vec![me]));
                    (rx, Some((k.next_batch, k.gate.clone())))
                }
            }
        };
        if let Some((batch, gate)) = lead {
            let leading = Leading { batches: &self.batches, kind: kind.clone(), batch };
            let _one_at_a_time = gate.lock_owned().await;
            // Only its leader takes a batch; it is gone only when the failure of a connection
            // was shared with its look-ups, which then have their answer.
            let waiting = self.batches.table().get_mut(&kind).map(|k| k.take(batch)).unwrap_or_default();
            drop(leading);
            if let Some(e) = self.search_batch(&q, waiting).await {
                // Asked for while the connection failed: they share its failure rather than
                // each trying again in turn.
                let queued = self.batches.table().get_mut(&kind).map(|k| std::mem::take(&mut k.open));
                for w in queued.into_iter().flatten().flat_map(|(_, waiting)| waiting) {
                    let _ = w.reply.send(Err(e.clone()));
                }
            }
        }
        match rx.await {
            Ok(result) => result,
            // The batch was abandoned: its leader's run ended first.
            Err(_) => self.search_alone(&q).await,
        }
    }

    /// Searches a batch's look-ups at once and gives each its entries; each searches alone
    /// when the answer is not clear. Returns the error of the connection that the search
    /// met, if it did: the look-ups that wait meanwhile share it.
    async fn search_batch(&self, q: &Lookup<'_>, waiting: Vec<Waiting>) -> Option<DirectoryError> {
        if waiting.len() <= 1 {
            // Alone, or none left (the connection failed while this batch waited).
            let w = waiting.into_iter().next()?;
            let own = Lookup { terms: w.terms, limit: w.limit, ..*q };
            let result = self.search_alone(&own).await;
            let failed = result.as_ref().err().filter(|e| e.is_the_connections()).cloned();
            let _ = w.reply.send(result);
            return failed;
        }
        let mut terms: Vec<&Term> = Vec::new();
        for t in waiting.iter().flat_map(|w| &w.terms) {
            if !terms.contains(&t) {
                terms.push(t);
            }
        }
        let cap = self.page_size.max(1) as usize;
        let attrs = q.batch_attrs();
        let f = q.filter(&terms);
        // Named without the values: an error reaches each look-up's run, which must not read
        // the others' values.
        let op = format!("search {} for {} look-ups at once", q.base, waiting.len());
        let answer = match self.search_once(q.base, q.scope, &f, &attrs, Some(cap), false, Some(&op)).await {
            Ok((entries, Some(r))) if r.rc == 0 => share(entries, &waiting),
            Ok((_, Some(r))) if r.rc == 32 && q.missing_base_ok => Some(waiting.iter().map(|_| Vec::new()).collect()),
            Err(e) if e.is_the_connections() => {
                for w in waiting {
                    let _ = w.reply.send(Err(e.clone()));
                }
                return Some(e);
            }
            // Cut at the cap, refused, or an entry no look-up claims: each look-up for itself.
            _ => None,
        };
        match answer {
            Some(found) => {
                for (w, entries) in waiting.into_iter().zip(found) {
                    let _ = w.reply.send(Ok(entries));
                }
            }
            None => {
                let alone = waiting.into_iter().map(|w| async move {
                    let own = Lookup { terms: w.terms, limit: w.limit, ..*q };
                    let _ = w.reply.send(self.search_alone(&own).await);
                });
                futures::future::join_all(alone).await;
            }
        }
        None
    }

    /// A look-up searched by itself.
    pub(crate) async fn search_alone(&self, q: &Lookup<'_>) -> Result<Vec<Entry>, DirectoryError> {
        let f = q.filter(&q.terms.iter().collect::<Vec<_>>());
        match q.limit {
            Some(limit) => self.search_raw(q.base, q.scope, &f, q.attrs, Some(limit), q.missing_base_ok).await,
            None => self.search_few(q.base, q.scope, &f, q.attrs, q.missing_base_ok).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn entry(dn: &str, attr: &str, values: &[&str]) -> Entry {
        let mut attributes = BTreeMap::new();
        attributes.insert(attr.to_string(), values.iter().map(|v| v.to_string()).collect());
        Entry { dn: dn.to_string(), attributes }
    }

    fn waiting(terms: Vec<Term>, limit: Option<usize>) -> Waiting {
        Waiting { terms, limit, reply: oneshot::channel().0 }
    }

    #[test]
    fn only_plain_values_of_attributes_compared_without_case_are_batched() {
        assert!(Term::eq("employeeID", "E-100").batchable());
        assert!(Term::eq("cn", "Jane Doe").batchable());
        assert!(Term::prefix("userPrincipalName", "jane.doe@").batchable());
        assert!(!Term::eq("cn", "Zoë Doe").batchable(), "non-ASCII: the server's case folding decides");
        assert!(!Term::eq("cn", "Jane  Doe").batchable(), "doubled spaces are insignificant to the server");
        assert!(!Term::eq("cn", " Jane").batchable());
        assert!(!Term::eq("cn", "").batchable());
        assert!(!Term::eq("cn", "a\tb").batchable());
        assert!(!Term::eq("departmentNumber", "42").batchable(), "an attribute that may compare with case");
    }

    #[test]
    fn entries_go_to_the_lookups_whose_values_they_hold() {
        let w = [
            waiting(vec![Term::eq("employeeID", "e1")], Some(3)),
            waiting(vec![Term::eq("employeeID", "E2")], Some(3)),
            waiting(vec![Term::eq("employeeID", "E3")], Some(3)),
            waiting(vec![Term::eq("uid", "jd"), Term::prefix("userPrincipalName", "jd@")], None),
        ];
        let found = share(
            vec![
                entry("cn=a", "employeeID", &["E1"]),
                entry("cn=b", "employeeid", &["e2"]),
                entry("cn=c", "employeeID", &["E2"]),
                entry("cn=d", "userPrincipalName", &["JD@example.com"]),
            ],
            &w,
        )
        .unwrap();
        let dns = |i: usize| found[i].iter().map(|e| e.dn.as_str()).collect::<Vec<_>>();
        assert_eq!(dns(0), ["cn=a"]);
        assert_eq!(dns(1), ["cn=b", "cn=c"], "two accounts with one ID: both, as a search alone finds them");
        assert!(dns(2).is_empty());
        assert_eq!(dns(3), ["cn=d"]);
    }

    #[test]
    fn a_lookup_keeps_its_limit_and_an_unclaimed_entry_ends_the_batch() {
        let w = [waiting(vec![Term::eq("cn", "x")], Some(2))];
        let many = (0..5).map(|i| entry(&format!("cn=x{i}"), "cn", &["X"])).collect();
        assert_eq!(share(many, &w).unwrap()[0].len(), 2);
        // The server matched an entry this file cannot account for: nothing is guessed.
        assert!(share(vec![entry("cn=y", "cn", &["y"])], &w).is_none());
        assert!(share(vec![entry("cn=z", "sn", &["x"])], &w).is_none());
    }

    #[test]
    fn a_batch_asks_for_what_its_terms_are_compared_on() {
        let q = Lookup {
            base: "dc=x",
            scope: Scope::Subtree,
            constraint: Some("(objectClass=user)"),
            terms: vec![Term::eq("employeeID", "1")],
            attrs: &["1.1"],
            limit: Some(2),
            missing_base_ok: false,
        };
        assert_eq!(q.batch_attrs(), ["employeeID"]);
        let t = [Term::eq("employeeID", "1"), Term::eq("employeeID", "2*)")];
        assert_eq!(
            q.filter(&t.iter().collect::<Vec<_>>()),
            r"(&(objectClass=user)(|(employeeID=1)(employeeID=2\2a\29)))"
        );
        assert_eq!(Lookup { attrs: &[], ..q }.batch_attrs(), ["*"]);
    }
}
