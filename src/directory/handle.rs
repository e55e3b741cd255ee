//! [`Directory`], the runtime of one `[directories.NAME]`: built from its configuration, it
//! owns the shared connection (or, in dry-run mode, the list of planned changes) and runs
//! operations on it. The operations themselves live in `users`, `groups` and `flexhr`.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::future::Future;
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
use ldap3::{Ldap, LdapError, Scope, SearchEntry, SearchOptions};
use serde::Serialize;

use super::batch::{Lookup, Term};
use super::config::{DirectoryConfig, DirectoryKind};
use super::conn::{tls_connector, ConnSpec, Pool};
use super::dn::Dn;
use super::error::DirectoryError;
use super::filter;
use super::ident::{Guid, Sid, UserId};
use super::schema::Schema;
use crate::diag::CheckCtx;

/// One directory: its settings and its connection. `Send + Sync`; share it in an `Arc`.
pub struct Directory {
    pub(crate) name: String,
    pub(crate) kind: DirectoryKind,
    pub(crate) schema: &'static Schema,
    pub(crate) base_dn: Dn,
    /// `base_dn` as text, written once: every subtree search of the sync names it.
    pub(crate) base_text: String,
    pub(crate) users_ou: Dn,
    /// Where the Flex HR sync may find and change accounts (`user_search_bases`).
    pub(crate) user_search_bases: Vec<Dn>,
    pub(crate) groups_base: Dn,
    pub(crate) upn_suffix: String,
    /// HR field -> attribute, defaults merged with the configured mapping.
    pub(crate) mapping: Vec<(String, String)>,
    /// The attribute that holds the HR key (`employeeID`).
    pub(crate) employee_attr: String,
    pub(crate) page_size: i32,
    pub(crate) op_timeout: Duration,
    pub(crate) secure: bool,
    /// `mode`: what the Flex HR sync may do unless a call says otherwise.
    pub(crate) sync_mode: super::config::SyncMode,
    mode: Mode,
    /// Syncs of one employee run one at a time (two tickets for one person must not both
    /// create an account).
    sync_locks: KeyLocks,
    /// New accounts whose logon names derive to the same text are created one at a time,
    /// each choosing its name after the one before was added: a directory need not refuse
    /// a logon name in use (OpenLDAP's `uid` is not unique), and a search answered while
    /// another sync's add was under way would not see its name.
    login_locks: KeyLocks,
    /// Look-ups waiting to share a search ([`super::batch`]).
    pub(crate) batches: super::batch::Batches,
    /// Searches sent so far.
    searches: std::sync::atomic::AtomicU64,
}

/// Async locks by key (employee IDs, logon names), forgotten when nobody holds or waits for them; and,
/// for a holder that waits for another key as well (a person's sync waiting for their
/// manager's), which key it waits for, so that no such wait can close a circle.
#[derive(Default)]
struct KeyLocks(Mutex<LockTable>);

#[derive(Default)]
struct LockTable {
    locks: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
    /// Holder's key -> the key it waits for (each holder waits for at most one).
    waits_for: HashMap<String, String>,
}

impl LockTable {
    /// Forgets `key`'s lock when nobody holds or waits for it any more.
    fn release(&mut self, key: &str) {
        if self.locks.get(key).is_some_and(|m| Arc::strong_count(m) == 1) {
            self.locks.remove(key);
        }
    }
}

/// Holds the lock of one key; releasing it forgets the key when nobody else wants it.
pub(crate) struct KeyGuard<'a> {
    locks: &'a KeyLocks,
    key: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl KeyLocks {
    fn table(&self) -> std::sync::MutexGuard<'_, LockTable> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn lock(&self, key: &str) -> KeyGuard<'_> {
        let m = self.table().locks.entry(key.to_string()).or_default().clone();
        KeyGuard { locks: self, key: key.to_string(), guard: Some(m.lock_owned().await) }
    }

    /// Whether someone holds or waits for `key`'s lock.
    fn busy(&self, key: &str) -> bool {
        self.table().locks.contains_key(key)
    }

    /// For the holder of `holder`'s lock: waits until those who hold or wait for `key`'s
    /// lock now are done with it, unless that could wait forever (`key` is `holder`'s own, or
    /// its holder waits, directly or through others, for `holder`). Returns whether it
    /// waited.
    async fn wait_until_free(&self, holder: &str, key: &str) -> bool {
        let m = {
            let mut table = self.table();
            let Some(m) = table.locks.get(key).cloned() else { return false };
            // Each holder waits for at most one key: the waits form chains, and a wait that
            // would end a chain at its own start is not taken.
            let mut next = Some(key);
            let mut steps = 0;
            while let Some(k) = next {
                if k == holder || steps > table.waits_for.len() {
                    return false;
                }
                next = table.waits_for.get(k).map(String::as_str);
                steps += 1;
            }
            table.waits_for.insert(holder.to_string(), key.to_string());
            m
        };
        // Ends the wait's record even when the wait is cancelled (the run's deadline).
        struct Waiting<'a>(&'a KeyLocks, &'a str, &'a str);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                let mut table = self.0.table();
                table.waits_for.remove(self.1);
                table.release(self.2);
            }
        }
        let waiting = Waiting(self, holder, key);
        drop(m.lock_owned().await);
        drop(waiting);
        true
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        self.locks.table().release(&self.key);
    }
}

enum Mode {
    Live(Box<Pool>),
    DryRun(Mutex<Vec<PlannedChange>>),
}

/// An entry read from the directory: its DN and its attributes, every value as text
/// (`objectGUID` and `objectSid` in their usual text forms, other binary values in hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// The entry's distinguished name.
    pub dn: String,
    /// Attribute name (as the server spells it) -> values.
    pub attributes: BTreeMap<String, Vec<String>>,
}

impl Entry {
    /// The values of an attribute, its name matched without regard to case.
    pub fn values(&self, attr: &str) -> &[String] {
        self.attributes.iter().find(|(k, _)| k.eq_ignore_ascii_case(attr)).map(|(_, v)| v.as_slice()).unwrap_or(&[])
    }

    /// The first value of an attribute.
    pub fn get(&self, attr: &str) -> Option<&str> {
        self.values(attr).first().map(String::as_str)
    }

    fn from_search(e: SearchEntry) -> Entry {
        let mut attributes: BTreeMap<String, Vec<String>> = BTreeMap::new();
        // ldap3 hands over a value as text when its bytes happen to be UTF-8, which a SID or
        // a GUID sometimes are (every byte below 0x80): those two are binary whatever their
        // bytes, and always shown in their text forms.
        for (name, values) in e.attrs {
            let text = match binary_identifier(&name) {
                true => values.iter().map(|v| binary_text(&name, v.as_bytes())).collect(),
                false => values,
            };
            attributes.insert(name, text);
        }
        for (name, values) in e.bin_attrs {
            attributes.insert(name.clone(), values.iter().map(|v| binary_text(&name, v)).collect());
        }
        Entry { dn: e.dn, attributes }
    }
}

fn binary_identifier(name: &str) -> bool {
    name.eq_ignore_ascii_case("objectSid") || name.eq_ignore_ascii_case("objectGUID")
}

/// A binary value as text: `objectGUID` as a GUID string, `objectSid` as `S-1-5-...`, other
/// values (or a malformed identifier) in hex.
fn binary_text(name: &str, v: &[u8]) -> String {
    let text = match name.to_ascii_lowercase().as_str() {
        "objectguid" => Guid::from_bytes(v).map(|g| g.to_string()),
        "objectsid" => Sid::from_bytes(v).map(|s| s.to_string()),
        _ => None,
    };
    text.unwrap_or_else(|| hex::encode(v))
}

/// A change a dry-run directory would have made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedChange {
    /// The operation (`create_user`, `update_user`, `disable_user`, ...).
    pub operation: String,
    /// The entry's DN, or how the caller named it when its DN is unknown.
    pub target: String,
    /// The attributes it would write (passwords never appear).
    pub attributes: BTreeMap<String, Vec<String>>,
    /// A sentence: "would create CN=...,OU=... with attributes ...".
    pub description: String,
}

impl std::fmt::Display for PlannedChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.description)
    }
}

/// A search as a script asks for it.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    /// The filter, with `{}` holes for [`SearchRequest::values`] (escaped by the host).
    pub filter: String,
    /// Values for the holes.
    pub values: Vec<String>,
    /// Attributes to return; empty means all user attributes.
    pub attributes: Vec<String>,
    /// Where to search; default the directory's `base_dn`.
    pub base: Option<String>,
    /// `base`, `one` or `sub` (default).
    pub scope: SearchScope,
    /// Stop after this many entries.
    pub limit: Option<usize>,
}

impl SearchRequest {
    /// A subtree search of `base_dn` for `filter` with its values.
    pub fn new(filter: impl Into<String>, values: Vec<String>) -> Self {
        Self {
            filter: filter.into(),
            values,
            attributes: Vec::new(),
            base: None,
            scope: SearchScope::Subtree,
            limit: None,
        }
    }
}

/// How deep a search goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchScope {
    /// Only the base entry.
    Base,
    /// The entries directly under the base.
    OneLevel,
    /// The base and everything under it.
    Subtree,
}

impl SearchScope {
    /// `base`, `one` / `onelevel`, `sub` / `subtree`.
    pub fn parse(text: &str) -> Result<Self, DirectoryError> {
        match text.to_ascii_lowercase().as_str() {
            "base" => Ok(Self::Base),
            "one" | "onelevel" | "one_level" => Ok(Self::OneLevel),
            "sub" | "subtree" => Ok(Self::Subtree),
            _ => Err(DirectoryError::InvalidInput(format!("search scope `{text}` is not base, one or sub"))),
        }
    }

    fn ldap(self) -> Scope {
        match self {
            Self::Base => Scope::Base,
            Self::OneLevel => Scope::OneLevel,
            Self::Subtree => Scope::Subtree,
        }
    }
}

impl DirectoryConfig {
    /// The runtime directory; relative paths (`ca_file`) resolve against `ctx.base_dir`, the
    /// configuration file's folder. Nothing is connected yet. `None` when the section has a
    /// problem, which is recorded (every problem, each at its place; warnings too).
    ///
    /// The bind password is needed whatever the check defers: a directory is not left out of
    /// a run the way a connection is.
    pub fn build(&self, name: &str, span: Range<usize>, ctx: &mut CheckCtx) -> Option<Directory> {
        let (resolved, problems) = self.resolve(name, ctx.base_dir);
        for p in problems {
            let at = p.span.unwrap_or_else(|| span.clone());
            match p.warning {
                false => ctx.error(at, p.message),
                true => ctx.warning(at, p.message),
            }
        }
        // A dry-run directory never binds, so its password is not resolved: the shipped
        // configuration names `${AD_BIND_PASSWORD}` and must work where it is not set.
        let bind = match (&self.bind_dn, &self.bind_password) {
            _ if self.dry_run => None,
            (Some(dn), Some(pw)) => {
                Some((dn.get_ref().clone(), pw.require(ctx, &format!("directories.{name}.bind_password"))?))
            }
            _ => None,
        };
        let r = resolved?;
        let url = self.url.get_ref().trim_end_matches('/').to_string();
        let secure = !self.is_plaintext();
        let mode = if self.dry_run {
            Mode::DryRun(Mutex::new(Vec::new()))
        } else {
            let tls = if secure {
                let at = self.ca_file.as_ref().map_or_else(|| self.url.span(), |f| f.span());
                let pem = match &r.ca_file {
                    Some(path) => match std::fs::read(path) {
                        Ok(pem) => Some(pem),
                        Err(e) => {
                            ctx.error(
                                at,
                                format!("directories.{name}: ca_file {} cannot be read: {e}", path.display()),
                            );
                            return None;
                        }
                    },
                    None => None,
                };
                match tls_connector(self.tls_verify, pem.as_deref()) {
                    Ok(tls) => Some(tls),
                    Err(e) => {
                        let message = match e {
                            DirectoryError::Config(m) => m,
                            e => e.to_string(),
                        };
                        ctx.error(at, format!("directories.{name}: {message}"));
                        return None;
                    }
                }
            } else {
                None
            };
            Mode::Live(Box::new(Pool::new(ConnSpec {
                directory: name.to_string(),
                url,
                starttls: self.starttls,
                tls,
                connect_timeout: self.connect_timeout.0,
                op_timeout: self.op_timeout.0,
                bind,
                allow_plaintext_bind: *self.allow_plaintext_bind.get_ref(),
            })))
        };
        let employee_attr =
            r.mapping.iter().find(|(f, _)| f == "EmployeeId").map(|(_, a)| a.clone()).unwrap_or_default();
        Some(Directory {
            name: name.to_string(),
            kind: self.kind,
            schema: self.kind.schema(),
            base_text: r.base_dn.to_string(),
            base_dn: r.base_dn,
            users_ou: r.users_ou,
            user_search_bases: r.user_search_bases,
            groups_base: r.groups_base,
            upn_suffix: r.upn_suffix,
            mapping: r.mapping,
            employee_attr,
            page_size: *self.page_size.get_ref() as i32,
            op_timeout: self.op_timeout.0,
            secure,
            sync_mode: self.mode,
            mode,
            sync_locks: KeyLocks::default(),
            login_locks: KeyLocks::default(),
            batches: Default::default(),
            searches: Default::default(),
        })
    }
}

impl Directory {
    /// Builds a directory from its configuration alone (relative paths against the current
    /// folder), by [`DirectoryConfig::build`]: its problems, errors only, are the error.
    pub fn new(name: &str, config: &DirectoryConfig) -> Result<Directory, DirectoryError> {
        let mut ctx = CheckCtx::new(Path::new("tripline.toml"), "", Path::new("."));
        let built = config.build(name, 0..0, &mut ctx);
        let errors: Vec<String> = ctx.diags.into_iter().filter(|d| d.is_error()).map(|d| d.message).collect();
        match built {
            Some(d) if errors.is_empty() => Ok(d),
            _ => Err(DirectoryError::Config(errors.join("; "))),
        }
    }

    /// The same directory in dry-run mode: nothing is connected, writes are recorded
    /// (for `tripline test`, which must show the writes that would happen).
    pub fn dry_run(name: &str, config: &DirectoryConfig) -> Result<Directory, DirectoryError> {
        let mut config = config.clone();
        config.dry_run = true;
        // Nothing is connected, so the CA file is not read (nor required to exist here).
        config.ca_file = None;
        Directory::new(name, &config)
    }

    /// A dry-run directory with this one's settings and an empty list of planned changes,
    /// so that concurrent runs each see only their own changes (the list of a shared
    /// dry-run directory mixes them).
    pub fn dry_run_copy(&self) -> Directory {
        Directory {
            name: self.name.clone(),
            kind: self.kind,
            schema: self.schema,
            base_dn: self.base_dn.clone(),
            base_text: self.base_text.clone(),
            users_ou: self.users_ou.clone(),
            user_search_bases: self.user_search_bases.clone(),
            groups_base: self.groups_base.clone(),
            upn_suffix: self.upn_suffix.clone(),
            mapping: self.mapping.clone(),
            employee_attr: self.employee_attr.clone(),
            page_size: self.page_size,
            op_timeout: self.op_timeout,
            secure: self.secure,
            sync_mode: self.sync_mode,
            mode: Mode::DryRun(Mutex::new(Vec::new())),
            sync_locks: KeyLocks::default(),
            login_locks: KeyLocks::default(),
            batches: Default::default(),
            searches: Default::default(),
        }
    }

    /// The configured name (`ActiveDirectory`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Active Directory or OpenLDAP.
    pub fn kind(&self) -> DirectoryKind {
        self.kind
    }

    /// The configured `base_dn`, as text.
    pub fn base_dn(&self) -> String {
        self.base_text.clone()
    }

    /// Where new users are created, as text.
    pub fn users_ou(&self) -> String {
        self.users_ou.to_string()
    }

    /// Whether this directory records changes instead of making them.
    pub fn is_dry_run(&self) -> bool {
        matches!(self.mode, Mode::DryRun(_))
    }

    /// The changes recorded so far in dry-run mode (always empty otherwise).
    pub fn planned_changes(&self) -> Vec<PlannedChange> {
        match &self.mode {
            Mode::DryRun(list) => list.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            Mode::Live(_) => Vec::new(),
        }
    }

    /// Returns and forgets the changes recorded so far in dry-run mode.
    pub fn take_planned_changes(&self) -> Vec<PlannedChange> {
        match &self.mode {
            Mode::DryRun(list) => std::mem::take(&mut *list.lock().unwrap_or_else(|e| e.into_inner())),
            Mode::Live(_) => Vec::new(),
        }
    }

    /// How many connections were opened so far: 1 while the first one lives, more after
    /// reconnects, 0 in dry-run mode or before first use.
    pub fn connections_opened(&self) -> u64 {
        match &self.mode {
            Mode::Live(pool) => pool.connections_opened(),
            Mode::DryRun(_) => 0,
        }
    }

    /// How many searches were sent so far (look-ups that shared one count once).
    pub fn searches_sent(&self) -> u64 {
        self.searches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Opens and binds the connection now if it is not open (the seed's "bind" step, and
    /// `tripline connection test`). A dry-run directory always succeeds.
    pub async fn connect(&self) -> Result<(), DirectoryError> {
        match &self.mode {
            Mode::Live(pool) => pool.get().await.map(|_| ()),
            Mode::DryRun(_) => Ok(()),
        }
    }

    /// Waits until no other sync of this employee runs in this process.
    pub(crate) async fn lock_employee(&self, employee_id: &str) -> KeyGuard<'_> {
        self.sync_locks.lock(employee_id).await
    }

    /// Waits until no other sync in this process is choosing a logon name like `base` (case
    /// aside) or creating the account that has it. Taken only by a sync that waits for no
    /// other sync while it holds it, so that no wait can close a circle.
    pub(crate) async fn lock_login(&self, base: &str) -> KeyGuard<'_> {
        self.login_locks.lock(&base.to_lowercase()).await
    }

    /// Whether a sync of employee `other` runs or waits in this process (besides the one
    /// holding `own`).
    pub(crate) fn employee_syncing(&self, own: &KeyGuard<'_>, other: &str) -> bool {
        own.key != other && self.sync_locks.busy(other)
    }

    /// For a sync holding `own`'s lock: waits for the syncs of employee `other` that run or
    /// wait in this process, unless one of them waits for `own` (see
    /// `KeyLocks::wait_until_free`). Returns whether it waited.
    pub(crate) async fn wait_for_employee(&self, own: &KeyGuard<'_>, other: &str) -> bool {
        self.sync_locks.wait_until_free(&own.key, other).await
    }

    /// Records a planned change in dry-run mode; `Some(())` means "recorded, do not send".
    pub(crate) fn plan(
        &self,
        operation: &str,
        target: &str,
        attributes: BTreeMap<String, Vec<String>>,
        description: String,
    ) -> Option<()> {
        let Mode::DryRun(list) = &self.mode else { return None };
        tracing::info!(directory = %self.name, operation, target, %description, "Dry run: change recorded.");
        super::audit::report(super::audit::Change::planned(&self.name, target, operation, &attributes, &description));
        list.lock().unwrap_or_else(|e| e.into_inner()).push(PlannedChange {
            operation: operation.to_string(),
            target: target.to_string(),
            attributes,
            description,
        });
        Some(())
    }

    /// Fails before anything is sent when a password would travel unencrypted.
    pub(crate) fn require_secure(&self) -> Result<(), DirectoryError> {
        if self.secure {
            Ok(())
        } else {
            Err(DirectoryError::InsecureConnection { directory: self.name.clone() })
        }
    }

    /// Runs one operation on the shared connection: converts its error, and drops the
    /// connection when it broke so the next call opens a new one. `op` describes the
    /// operation for an error; it is written only when there is one.
    pub(crate) async fn run<T, F, Fut>(&self, op: impl FnOnce() -> String, f: F) -> Result<T, DirectoryError>
    where
        F: FnOnce(Ldap) -> Fut,
        Fut: Future<Output = Result<T, LdapError>>,
    {
        let Mode::Live(pool) = &self.mode else {
            return Err(DirectoryError::Unsupported(format!("{}: directory {} is in dry-run mode", op(), self.name)));
        };
        let conn = pool.get().await?;
        let mut ldap = conn.ldap;
        ldap.with_timeout(self.op_timeout);
        match f(ldap).await {
            Ok(v) => Ok(v),
            Err(e) => {
                let err = DirectoryError::from_ldap(&op(), e, self.op_timeout);
                if err.breaks_connection() {
                    pool.discard(conn.generation);
                }
                Err(err)
            }
        }
    }

    /// A search, paged unless one page holds the whole answer (a base search, or one limited
    /// to at most `page_size` entries: those go without the paged-results control, which
    /// costs both sides work for nothing). `missing_base_ok`: an absent base gives no entries
    /// instead of an error (lookups by DN). Returns nothing in dry-run mode.
    pub(crate) async fn search_raw(
        &self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[&str],
        limit: Option<usize>,
        missing_base_ok: bool,
    ) -> Result<Vec<Entry>, DirectoryError> {
        if self.is_dry_run() {
            return Ok(Vec::new());
        }
        let one_page = matches!(scope, Scope::Base) || limit.is_some_and(|l| l <= self.page_size.max(1) as usize);
        let (entries, result) = self.search_once(base, scope, filter, attrs, limit, !one_page, None).await?;
        Self::search_outcome(base, filter, entries, result, limit.is_some(), missing_base_ok)
    }

    /// Like [`Directory::search_raw`] without a limit, for searches that usually find few
    /// entries (the sync's name checks): first without paging, at most `page_size` entries;
    /// an answer cut short by that size limit is read again in pages, so the entries are
    /// the same as a paged search's.
    pub(crate) async fn search_few(
        &self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[&str],
        missing_base_ok: bool,
    ) -> Result<Vec<Entry>, DirectoryError> {
        if self.is_dry_run() {
            return Ok(Vec::new());
        }
        let page = self.page_size.max(1) as usize;
        let (entries, result) = self.search_once(base, scope, filter, attrs, Some(page), false, None).await?;
        match result {
            // Complete: fewer entries than a page.
            Some(r) if r.rc == 0 => Ok(entries),
            // Cut at a page (by the server's size limit, or by ours): read it all in pages.
            None | Some(ldap3::LdapResult { rc: 4, .. }) => {
                self.search_raw(base, scope, filter, attrs, None, missing_base_ok).await
            }
            result => Self::search_outcome(base, filter, entries, result, false, missing_base_ok),
        }
    }

    /// The entries of a search, and its final result (`None` when it was stopped at
    /// `limit` entries and abandoned). An error names the search as `op` does, else by its
    /// base and filter.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn search_once(
        &self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[&str],
        limit: Option<usize>,
        paged: bool,
        op: Option<&str>,
    ) -> Result<(Vec<Entry>, Option<ldap3::LdapResult>), DirectoryError> {
        let attrs: Vec<&str> = if attrs.is_empty() { vec!["*"] } else { attrs.to_vec() };
        let page_size = self.page_size;
        let size_limit = limit.map(|l| l.min(i32::MAX as usize) as i32).unwrap_or(0);
        self.searches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.run(
            || op.map_or_else(|| format!("search {base} for {filter}"), str::to_string),
            |mut ldap| async move {
                let adapters: Vec<Box<dyn Adapter<'_, &str, Vec<&str>>>> = if paged {
                    vec![Box::new(EntriesOnly::new()), Box::new(PagedResults::new(page_size))]
                } else {
                    vec![Box::new(EntriesOnly::new())]
                };
                let mut stream = ldap
                    .with_search_options(SearchOptions::new().sizelimit(size_limit))
                    .streaming_search_with(adapters, base, scope, filter, attrs)
                    .await?;
                let mut entries = Vec::new();
                while let Some(entry) = stream.next().await? {
                    entries.push(Entry::from_search(SearchEntry::construct(entry)));
                    if limit.is_some_and(|l| entries.len() >= l) {
                        // Enough: not every server applies the size limit to paged searches.
                        let msgid = stream.ldap_handle().last_id();
                        let _ = stream.finish().await;
                        let _ = stream.ldap_handle().abandon(msgid).await;
                        return Ok((entries, None));
                    }
                }
                Ok((entries, Some(stream.finish().await)))
            },
        )
        .await
    }

    /// A search's entries, or the error its final result says.
    fn search_outcome(
        base: &str,
        filter: &str,
        entries: Vec<Entry>,
        result: Option<ldap3::LdapResult>,
        limited: bool,
        missing_base_ok: bool,
    ) -> Result<Vec<Entry>, DirectoryError> {
        match result {
            None => Ok(entries),
            Some(r) if r.rc == 0 => Ok(entries),
            Some(r) if r.rc == 4 && limited => Ok(entries),
            Some(r) if r.rc == 32 && missing_base_ok => Ok(Vec::new()),
            Some(r) => Err(DirectoryError::from_result(&format!("search {base} for {filter}"), &r)),
        }
    }

    /// Searches with a script's filter template; values are escaped into its holes.
    pub async fn search(&self, request: &SearchRequest) -> Result<Vec<Entry>, DirectoryError> {
        let filter = filter::fill_template(&request.filter, &request.values)?;
        let base = match &request.base {
            Some(b) => Dn::parse(b).map_err(|e| DirectoryError::InvalidInput(e.to_string()))?.to_string(),
            None => self.base_text.clone(),
        };
        let attrs: Vec<&str> = request.attributes.iter().map(String::as_str).collect();
        for a in &attrs {
            if *a != "*" && *a != "+" && !super::dn::is_attribute_type(a) {
                return Err(DirectoryError::InvalidInput(format!("`{a}` is not an attribute name")));
            }
        }
        self.search_raw(&base, request.scope.ldap(), &filter, &attrs, request.limit, false).await
    }

    /// The one user `id` names, with the given attributes (all when empty), or `None`.
    pub(crate) async fn lookup(&self, id: &UserId, attrs: &[&str]) -> Result<Option<Entry>, DirectoryError> {
        if matches!(id, UserId::Sid(_) | UserId::Guid(_)) && self.kind != DirectoryKind::ActiveDirectory {
            return Err(DirectoryError::Unsupported(format!(
                "directory {} is kind = \"{}\": objectSid and objectGUID are Active Directory's; find the user by \
                 dn, uid, mail or employeeNumber",
                self.name, self.kind
            )));
        }
        let found = match (id, id.terms(self.schema, &self.employee_attr)) {
            (UserId::Dn(dn), _) => self.search_raw(dn, Scope::Base, self.schema.user_filter, attrs, None, true).await?,
            (_, Some(terms)) => self.find(self.user_lookup(terms, attrs, 2)).await?,
            (_, None) => {
                let f = id.filter(self.schema, &self.employee_attr);
                self.search_raw(&self.base_text, Scope::Subtree, &f, attrs, Some(2), false).await?
            }
        };
        match found.len() {
            0 | 1 => Ok(found.into_iter().next()),
            count => Err(DirectoryError::Ambiguous { what: id.to_string(), count }),
        }
    }

    /// A look-up of at most `limit` user accounts anywhere under the base that have one of
    /// `terms`.
    pub(crate) fn user_lookup<'a>(&'a self, terms: Vec<Term>, attrs: &'a [&'a str], limit: usize) -> Lookup<'a> {
        Lookup {
            base: &self.base_text,
            scope: Scope::Subtree,
            constraint: Some(self.schema.user_filter),
            terms,
            attrs,
            limit: Some(limit),
            missing_base_ok: false,
        }
    }

    /// Like [`Directory::lookup`], but a missing user is an error.
    pub(crate) async fn locate(&self, id: &UserId, attrs: &[&str]) -> Result<Entry, DirectoryError> {
        self.lookup(id, attrs).await?.ok_or_else(|| DirectoryError::NotFound(id.to_string()))
    }

    /// How a dry-run change names a user it cannot look up.
    pub(crate) fn dry_target(id: &UserId) -> String {
        match id {
            UserId::Dn(dn) => dn.clone(),
            other => other.to_string(),
        }
    }
}

/// `a: x; b: y, z` for descriptions.
pub(crate) fn describe_attrs(attrs: &BTreeMap<String, Vec<String>>) -> String {
    attrs.iter().map(|(k, v)| format!("{k}: {}", v.join(", "))).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_identifiers_read_as_text() {
        let guid = [0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff];
        assert_eq!(binary_text("objectGUID", &guid), "00112233-4455-6677-8899-aabbccddeeff");
        // S-1-5-21-1-2-3-500
        let mut sid = vec![1u8, 5, 0, 0, 0, 0, 0, 5];
        for n in [21u32, 1, 2, 3, 500] {
            sid.extend_from_slice(&n.to_le_bytes());
        }
        assert_eq!(binary_text("objectsid", &sid), "S-1-5-21-1-2-3-500");
        assert_eq!(binary_text("objectSid", &[1, 5, 0]), "010500", "not a SID: hex");
        assert_eq!(binary_text("thumbnailPhoto", &[0xff, 0]), "ff00");
        // Bytes that happen to be UTF-8 come as text from ldap3, and are shown the same way.
        let ascii_sid: Vec<u8> = [1u8, 1, 0, 0, 0, 0, 0, 5, 0x20, 0x21, 0x22, 0x23].to_vec();
        let entry = SearchEntry {
            dn: "CN=x".into(),
            attrs: HashMap::from([
                ("objectSid".to_string(), vec![String::from_utf8(ascii_sid).unwrap()]),
                ("objectGUID".to_string(), vec!["0123456789abcdef".to_string()]),
            ]),
            bin_attrs: HashMap::new(),
        };
        let e = Entry::from_search(entry);
        assert_eq!(e.get("objectSid"), Some("S-1-5-589439264"));
        assert_eq!(e.get("objectGUID"), Some("33323130-3534-3736-3839-616263646566"));
    }

    #[tokio::test]
    async fn waits_for_another_key_never_close_a_circle() {
        let locks = KeyLocks::default();
        let a = locks.lock("A").await;
        // Nobody syncs B, and A never waits for itself.
        assert!(!locks.busy("B"));
        assert!(!locks.wait_until_free("A", "B").await);
        assert!(!locks.wait_until_free("A", "A").await);
        let b = locks.lock("B").await;
        let c = locks.lock("C").await;
        // A waits for B, B for C: C waiting for A (or for B) would close a circle.
        let a_waits = locks.wait_until_free("A", "B");
        tokio::pin!(a_waits);
        assert!(futures::poll!(&mut a_waits).is_pending());
        let b_waits = locks.wait_until_free("B", "C");
        tokio::pin!(b_waits);
        assert!(futures::poll!(&mut b_waits).is_pending());
        assert!(!locks.wait_until_free("C", "A").await);
        assert!(!locks.wait_until_free("C", "B").await);
        assert!(!locks.wait_until_free("B", "A").await);
        // C ends: B's wait ends, then B ends and A's wait ends.
        drop(c);
        assert!(b_waits.await);
        drop(b);
        assert!(a_waits.await);
        drop(a);
        let table = locks.table();
        assert!(table.locks.is_empty() && table.waits_for.is_empty(), "every key is forgotten");
    }

    #[tokio::test]
    async fn a_cancelled_wait_is_forgotten() {
        let locks = KeyLocks::default();
        let a = locks.lock("A").await;
        let b = locks.lock("B").await;
        {
            let a_waits = locks.wait_until_free("A", "B");
            tokio::pin!(a_waits);
            assert!(futures::poll!(&mut a_waits).is_pending());
        }
        // A no longer waits, so B may wait for A.
        let b_waits = locks.wait_until_free("B", "A");
        tokio::pin!(b_waits);
        assert!(futures::poll!(&mut b_waits).is_pending());
        drop(a);
        assert!(b_waits.await);
        drop(b);
        let table = locks.table();
        assert!(table.locks.is_empty() && table.waits_for.is_empty());
    }

    #[test]
    fn entries_match_attribute_names_without_case() {
        let e = Entry { dn: "CN=x".into(), attributes: BTreeMap::from([("sAMAccountName".into(), vec!["jd".into()])]) };
        assert_eq!(e.get("samaccountname"), Some("jd"));
        assert!(e.values("mail").is_empty());
    }
}
