//! The directory half of the seed's `api.ProcessFlexHrUserOnAD(record, directory)`: one Flex
//! HR user (the ticket's fields) made true in the directory.
//!
//! The user is found by its HR key (`EmployeeId` in `employeeID`). Absent and active: it is
//! created in `users_ou` with the mapped attributes, a unique CN (the display name, `Name (2)`
//! on a clash) and a unique logon name (Username, or derived from the names, at most 20
//! characters on AD, a numeric suffix on a clash), disabled until someone gives it a
//! password. Present: the attributes that differ are updated and named, the CN follows a
//! changed name (`displayName` differs). `Active = false` disables the account. The manager is found by
//! `ManagerEmployeeId` and set, or reported unresolved. Running the same record twice
//! changes nothing the second time.
//!
//! Scope: the sync changes only accounts under `user_search_bases` (default `users_ou`). The
//! employee ID is looked up in the whole `base_dn`, so that a match elsewhere (a service or
//! admin account that happens to carry the same ID) is seen and reported as a conflict
//! ([`DirectoryError::Conflict`]: nothing changed, the run fails for good, the ticket stays
//! open) instead of being taken for the person. Accounts marked privileged (`adminCount`
//! set, or `isCriticalSystemObject`) are conflicts even inside the bases: an HR record must
//! never rewrite an administrator's mail or names. The manager is looked up in the whole
//! `base_dn` (managers may sit in other OUs); that is a read, and only the person's own
//! `manager` attribute is written.
//!
//! Decisions the seed leaves open:
//! - `IsNewUser = 0` with no account: the account is created anyway (the HR record is the
//!   truth; a missing account is the bug) and a note says so.
//! - `Active = false` with no account: nothing is created (status `skipped`).
//! - A disabled account whose person is active again is not re-enabled (it may have no
//!   password); a note says so.
//! - The logon name and UPN of an existing account never change (logons would break).
//! - A field missing from the record leaves its attribute alone; present but empty clears it.
//! - Values are trimmed and runs of whitespace collapsed; control characters are refused.

use std::collections::{BTreeMap, HashSet};

use ldap3::Scope;
use serde::Serialize;
use serde_json::{Map, Value};

use super::batch::{Lookup, Term};
use super::config::{DirectoryKind, SyncMode};
use super::dn::Dn;
use super::error::DirectoryError;
use super::handle::{Directory, Entry, KeyGuard};
use super::ident::UserId;
use super::users::{NewUser, SAM_FORBIDDEN};

/// What one sync did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SyncOutcome {
    /// created, updated, unchanged or skipped.
    pub status: SyncStatus,
    /// The account's DN (empty when skipped).
    pub dn: String,
    /// The account's logon name (`sAMAccountName`, or `uid` on OpenLDAP).
    #[serde(rename = "sAMAccountName")]
    pub login: String,
    /// Attributes written, by name (for a new account: all it was created with).
    pub changes: Vec<String>,
    /// Whether the manager was found.
    pub manager: ManagerOutcome,
    /// `Active` was false: the account is disabled (now, or it already was).
    pub disabled: bool,
    /// The directory's base DN, for the closing comment.
    pub base_dn: String,
    /// The person's employee ID (the sync key).
    pub employee_id: String,
    /// Things a person should know (decisions taken, see the module docs).
    pub notes: Vec<String>,
    /// Nothing was written: the directory is in dry-run mode (see `planned_changes`).
    pub dry_run: bool,
    /// The mode the sync ran in (the directory's `mode`, or the call's).
    pub mode: SyncMode,
}

/// The overall result of a sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncStatus {
    /// A new account was created.
    Created,
    /// An existing account had attributes that differed; they were written.
    Updated,
    /// The account already matched the record.
    Unchanged,
    /// Nothing to do (a leaver without an account).
    Skipped,
    /// `update_only`: the person has no account, and this mode creates none. The ticket
    /// stays open.
    NotCreated,
    /// `create_only`: the person has an account, which this mode leaves as it is.
    LeftAlone,
}

/// What became of `ManagerEmployeeId`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ManagerOutcome {
    /// The record names no manager.
    NotGiven,
    /// Found; `manager` points at this DN.
    Resolved { employee_id: String, dn: String },
    /// No account has this employee ID: the manager must be entered by hand.
    Unresolved { employee_id: String },
}

impl SyncOutcome {
    /// Whether everything was done (false while the manager is unresolved): the caller
    /// closes the ticket only then.
    pub fn is_complete(&self) -> bool {
        self.status != SyncStatus::NotCreated && !matches!(self.manager, ManagerOutcome::Unresolved { .. })
    }

    /// The mode's decision when it kept the sync from doing what `create_and_update` would
    /// have done, as a sentence for the ticket.
    pub fn decision(&self) -> Option<String> {
        match self.status {
            SyncStatus::NotCreated => Some(format!(
                "mode {}: no account in {} has employee ID {}, and this mode creates none",
                self.mode, self.base_dn, self.employee_id
            )),
            SyncStatus::LeftAlone => Some(format!(
                "mode {}: user {} ({}) already exists in {} and was left as it is; nothing was changed",
                self.mode, self.login, self.dn, self.base_dn
            )),
            _ => None,
        }
    }

    /// One line for a ticket comment.
    pub fn summary(&self) -> String {
        let what = match self.status {
            SyncStatus::Created => "created",
            SyncStatus::Updated => "updated",
            SyncStatus::Unchanged => "already up to date:",
            SyncStatus::Skipped => "skipped:",
            SyncStatus::NotCreated | SyncStatus::LeftAlone => "",
        };
        let mut s = match self.status {
            SyncStatus::Skipped => format!("{what} {}", self.notes.join("; ")),
            SyncStatus::NotCreated | SyncStatus::LeftAlone => self.decision().unwrap_or_default(),
            _ => format!("{what} {} (username {}) in {}", self.dn, self.login, self.base_dn),
        };
        if self.status == SyncStatus::Updated {
            s.push_str(&format!("; changed: {}", self.changes.join(", ")));
        }
        if self.disabled {
            s.push_str("; account disabled");
        }
        if let ManagerOutcome::Unresolved { employee_id } = &self.manager {
            s.push_str(&format!(
                "; manager with employee ID {employee_id} not found: the manager must be entered manually"
            ));
        }
        if self.dry_run {
            s.insert_str(0, "dry run: ");
        }
        s
    }
}

/// A call's options (`api.ProcessFlexHrUserOnAD(record, "AD", #{ mode: "update_only" })`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncOptions {
    /// Over the directory's `mode`.
    pub mode: Option<SyncMode>,
}

impl SyncOptions {
    /// The options a script gave. An unknown key or mode is an error naming it: a misspelt
    /// option silently ignored would create the accounts it was meant to prevent.
    pub fn from_json(map: &Map<String, Value>) -> Result<SyncOptions, DirectoryError> {
        let mut options = SyncOptions::default();
        for (key, value) in map {
            match (key.as_str(), value) {
                ("mode", Value::String(m)) => {
                    options.mode = Some(SyncMode::parse(m).map_err(DirectoryError::InvalidInput)?)
                }
                ("mode", other) => {
                    return Err(DirectoryError::InvalidInput(format!(
                        "option mode must be one of {}, not {other}",
                        SyncMode::NAMES.join(", ")
                    )))
                }
                (other, _) => {
                    let hint = match crate::diag::did_you_mean(other, ["mode"]) {
                        Some(s) => format!("; did you mean `{s}`?"),
                        None => String::new(),
                    };
                    return Err(DirectoryError::InvalidInput(format!(
                        "unknown option `{other}`: the only option is mode{hint}"
                    )));
                }
            }
        }
        Ok(options)
    }
}

/// A Flex HR user, read and checked.
#[derive(Debug)]
struct HrUser {
    employee_id: String,
    first: String,
    last: String,
    username: Option<String>,
    manager_id: Option<String>,
    active: bool,
    is_new: Option<bool>,
    /// Mapped attributes present in the record: `None` clears the attribute.
    attrs: Vec<(String, Option<String>)>,
}

fn field<'a>(fields: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    fields.get(name).or_else(|| fields.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v))
}

/// A field as text: trimmed, whitespace collapsed; `None` when null or empty.
fn text(name: &str, v: &Value) -> Result<Option<String>, DirectoryError> {
    let raw = match v {
        Value::Null => return Ok(None),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => if *b { "TRUE" } else { "FALSE" }.to_string(),
        _ => return Err(DirectoryError::InvalidInput(format!("field {name} must be text, not {v}"))),
    };
    if raw.chars().any(char::is_control) {
        return Err(DirectoryError::InvalidInput(format!("field {name} contains control characters")));
    }
    let s = raw.split_whitespace().collect::<Vec<_>>().join(" ");
    Ok((!s.is_empty()).then_some(s))
}

fn flag(name: &str, v: &Value) -> Result<Option<bool>, DirectoryError> {
    let b = match v {
        Value::Null => return Ok(None),
        Value::Bool(b) => *b,
        Value::Number(n) if n.as_i64() == Some(0) => false,
        Value::Number(n) if n.as_i64() == Some(1) => true,
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            "" => return Ok(None),
            _ => return Err(DirectoryError::InvalidInput(format!("field {name} must be true or false, not {s:?}"))),
        },
        _ => return Err(DirectoryError::InvalidInput(format!("field {name} must be true or false, not {v}"))),
    };
    Ok(Some(b))
}

impl HrUser {
    fn parse(fields: &Map<String, Value>, mapping: &[(String, String)]) -> Result<HrUser, DirectoryError> {
        let required = |name: &str| -> Result<String, DirectoryError> {
            field(fields, name)
                .map(|v| text(name, v))
                .transpose()?
                .flatten()
                .ok_or_else(|| DirectoryError::InvalidInput(format!("the Flex HR record has no {name}")))
        };
        let optional = |name: &str| field(fields, name).map(|v| text(name, v)).transpose().map(Option::flatten);
        let employee_id = required("EmployeeId")?;
        let first = required("FirstName")?;
        let last = required("LastName")?;
        let mut attrs = Vec::new();
        for (hr_field, attr) in mapping {
            if let Some(v) = field(fields, hr_field) {
                attrs.push((attr.clone(), text(hr_field, v)?));
            }
        }
        Ok(HrUser {
            employee_id,
            first,
            last,
            username: optional("Username")?,
            manager_id: optional("ManagerEmployeeId")?,
            active: field(fields, "Active").map(|v| flag("Active", v)).transpose()?.flatten().unwrap_or(true),
            is_new: field(fields, "IsNewUser").map(|v| flag("IsNewUser", v)).transpose()?.flatten(),
            attrs,
        })
    }

    fn display_name(&self) -> String {
        format!("{} {}", self.first, self.last)
    }
}

/// Why an account counts as privileged, if it does: AD sets `adminCount` on members of
/// protected groups (Domain Admins, Account Operators, ...) and `isCriticalSystemObject` on
/// the built-in accounts.
fn privileged_mark(entry: &Entry) -> Option<String> {
    if let Some(v) = entry.get("adminCount").filter(|v| v.trim() != "0") {
        return Some(format!("adminCount = {v}"));
    }
    entry
        .get("isCriticalSystemObject")
        .filter(|v| v.eq_ignore_ascii_case("TRUE"))
        .map(|_| "isCriticalSystemObject".into())
}

/// Lowercase ASCII letters, digits and `-` of a name (`Zoë` -> `zoe`, `O'Brien` -> `obrien`).
fn slug(name: &str) -> String {
    deunicode::deunicode(name)
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect::<String>()
        .trim_matches('-')
        .to_string()
}

/// The first `max` characters, without a trailing `.` or `-`.
fn cut(s: &str, max: usize) -> String {
    s.chars().take(max).collect::<String>().trim_end_matches(['.', '-']).to_string()
}

/// A logon name from the names: `first.last`, ASCII, at most `max` characters.
pub fn derive_login(first: &str, last: &str, max: usize) -> String {
    let parts: Vec<String> = [slug(first), slug(last)].into_iter().filter(|s| !s.is_empty()).collect();
    cut(&parts.join("."), max)
}

/// A Username from HR made acceptable as a logon name: ASCII letters, digits, `.`, `-`, `_`.
pub fn sanitize_login(username: &str, max: usize) -> String {
    let ascii = deunicode::deunicode(username);
    let kept: String = ascii
        .chars()
        .filter(|c| (c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')) && !SAM_FORBIDDEN.contains(c))
        .collect();
    cut(kept.trim_start_matches('.'), max)
}

/// `base` with the numeric suffix `n`, cut so the whole stays within `max` characters.
pub fn with_suffix(base: &str, n: u32, max: usize) -> String {
    let suffix = n.to_string();
    format!("{}{suffix}", cut(base, max.saturating_sub(suffix.len())))
}

/// The first of `base`, `base (2)`, `base (3)`, ... (at most 64 characters) not in `taken`
/// (lowercase).
fn unique_cn(base: &str, taken: &HashSet<String>) -> Option<String> {
    (1..1000u32)
        .map(|n| if n == 1 { cut_cn(base, "") } else { cut_cn(base, &format!(" ({n})")) })
        .find(|c| !taken.contains(&c.to_lowercase()))
}

fn cut_cn(base: &str, suffix: &str) -> String {
    let keep = 64 - suffix.chars().count();
    format!("{}{suffix}", base.chars().take(keep).collect::<String>().trim_end())
}

/// What every candidate of [`unique_cn`] for `base` starts with: `base`, or for a long name
/// the part that `base (999)` keeps of it.
fn cn_prefix(base: &str) -> String {
    let longest = cut_cn(base, " (999)");
    longest.strip_suffix(" (999)").unwrap_or(&longest).to_string()
}

/// `Jane Doe (2)` -> `Jane Doe`: the name a unique CN was made from.
fn cn_base(cn: &str) -> &str {
    if let Some(open) = cn.rfind(" (") {
        let inner = &cn[open + 2..];
        if inner.ends_with(')') && inner.len() > 1 && inner[..inner.len() - 1].bytes().all(|b| b.is_ascii_digit()) {
            return &cn[..open];
        }
    }
    cn
}

impl Directory {
    /// Makes the directory match one Flex HR user (`fields`: the ticket's fields). See the
    /// module docs for what it does; the caller comments and closes the ticket from the
    /// returned [`SyncOutcome`], and retries when the error [`is_transient`].
    ///
    /// [`is_transient`]: DirectoryError::is_transient
    pub async fn sync_flexhr_user(&self, fields: &Map<String, Value>) -> Result<SyncOutcome, DirectoryError> {
        self.sync_flexhr_user_with(fields, &SyncOptions::default()).await
    }

    /// [`Directory::sync_flexhr_user`] with a call's options (`mode` over the directory's).
    pub async fn sync_flexhr_user_with(
        &self,
        fields: &Map<String, Value>,
        options: &SyncOptions,
    ) -> Result<SyncOutcome, DirectoryError> {
        let hr = HrUser::parse(fields, &self.mapping)?;
        let mode = options.mode.unwrap_or(self.sync_mode);
        let lock = self.lock_employee(&hr.employee_id).await;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.sync_once(&hr, &lock, mode).await.map(|mut o| {
                o.mode = mode;
                o
            }) {
                // Another process created this person (or took the chosen names) between
                // our look-up and our add: look again.
                Err(DirectoryError::AlreadyExists { .. }) if attempt < 3 => continue,
                // Still racing other workers for the same names (people whose logon names
                // derive to the same text): a later attempt of the run will find them taken
                // and pick the next free ones, so this is not the person's fault.
                Err(DirectoryError::AlreadyExists { op, reason }) => {
                    return Err(DirectoryError::Busy(format!("{op}: {reason} (names taken concurrently; will retry)")))
                }
                other => return other,
            }
        }
    }

    /// One attempt of a sync, under the employee's lock.
    ///
    /// The reads a sync needs do not depend on each other, so they are sent at once on the
    /// shared, pipelined connection and the sync waits for one round trip instead of one per
    /// read: the account by employee ID, the manager's, and, for a person who is probably
    /// new (active, `IsNewUser` not 0), the search for a free CN. (The logon name is chosen
    /// after them, under [`Directory::lock_login`]: the directory refuses a CN in use, but
    /// not always a logon name, see [`Directory::create_named`].) Their
    /// results are used in the order the decisions need them, so a sync ends as it would
    /// with the reads one after the other (the same outcome, and the same error first); a
    /// read whose answer turns out not to be needed (the names of a person who has an
    /// account, the manager of a leaver who has none) is dropped, its error too.
    async fn sync_once(&self, hr: &HrUser, lock: &KeyGuard<'_>, mode: SyncMode) -> Result<SyncOutcome, DirectoryError> {
        let probably_new = hr.active && hr.is_new != Some(false) && mode != SyncMode::UpdateOnly;
        let (account, manager, cn) =
            futures::join!(self.synced_account(&hr.employee_id), self.manager_dn(hr, lock), async {
                match probably_new {
                    true => Some(self.new_person_cn(hr).await),
                    false => None,
                }
            },);
        match account? {
            // The mode decides before anything is written; the manager is not looked at.
            Some(entry) if mode == SyncMode::CreateOnly => {
                let login = entry.get(self.schema.login).unwrap_or_default().to_string();
                let mut o = self.outcome(SyncStatus::LeftAlone, entry.dn, login, hr);
                o.manager = ManagerOutcome::NotGiven;
                Ok(o)
            }
            Some(entry) => self.sync_existing(hr, entry, manager?).await,
            None if !hr.active => {
                let mut o = self.outcome(SyncStatus::Skipped, String::new(), String::new(), hr);
                o.notes.push(format!("no account has employee ID {} and the person is not active", hr.employee_id));
                Ok(o)
            }
            None if mode == SyncMode::UpdateOnly => {
                let mut o = self.outcome(SyncStatus::NotCreated, String::new(), String::new(), hr);
                o.manager = ManagerOutcome::NotGiven;
                Ok(o)
            }
            None => {
                let cn = match cn {
                    Some(cn) => cn,
                    None => self.new_person_cn(hr).await,
                }?;
                self.create_named(hr, cn, manager).await
            }
        }
    }

    /// The account of the person `key` names, if the sync may change it (see the module docs):
    /// `None` when no account has the key, a conflict when one that has it is out of scope.
    async fn synced_account(&self, employee_id: &str) -> Result<Option<Entry>, DirectoryError> {
        let key = UserId::EmployeeId(employee_id.to_string());
        // Three: enough to tell one, several and a match out of scope apart.
        let found = self.find(self.user_lookup(vec![Term::eq(&self.employee_attr, employee_id)], &[], 3)).await?;
        let bases = || self.user_search_bases.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
        for entry in &found {
            let in_scope = Dn::parse(&entry.dn).is_ok_and(|dn| self.user_search_bases.iter().any(|b| dn.is_within(b)));
            let conflict = |reason: String, fix: &str| DirectoryError::Conflict {
                what: format!("the account with employee ID {employee_id}"),
                dn: entry.dn.clone(),
                reason,
                fix: fix.to_string(),
            };
            if !in_scope {
                return Err(conflict(
                    format!("outside the sync's user_search_bases ({})", bases()),
                    "correct the EmployeeId in HR or the account's employee ID, or add its OU to user_search_bases \
                     if the sync may manage it",
                ));
            }
            if let Some(mark) = privileged_mark(entry) {
                return Err(conflict(
                    format!("a privileged account ({mark})"),
                    "the sync never changes privileged accounts; correct the EmployeeId in HR or the account's \
                     employee ID",
                ));
            }
        }
        match found.len() {
            0 | 1 => Ok(found.into_iter().next()),
            count => Err(DirectoryError::Ambiguous { what: key.to_string(), count }),
        }
    }

    fn outcome(&self, status: SyncStatus, dn: String, login: String, hr: &HrUser) -> SyncOutcome {
        SyncOutcome {
            status,
            dn,
            login,
            changes: Vec::new(),
            manager: match &hr.manager_id {
                Some(id) => ManagerOutcome::Unresolved { employee_id: id.clone() },
                None => ManagerOutcome::NotGiven,
            },
            disabled: false,
            base_dn: self.base_text.clone(),
            employee_id: hr.employee_id.clone(),
            notes: Vec::new(),
            dry_run: self.is_dry_run(),
            mode: SyncMode::default(),
        }
    }

    /// The manager's DN, when the record names one and it exists.
    ///
    /// The manager's own sync may run in this process at the same time (a new team in one
    /// batch of tickets). A manager not found whose sync had started when the look-up was
    /// sent, or is still running, is waited for and looked up again: a person whose sync
    /// starts after the manager's always gets the manager, whichever sync reaches the
    /// directory first. The wait is skipped where it could never end (the manager's sync
    /// waits, directly or through others, for this person's: two people named as each
    /// other's manager).
    async fn manager_dn(&self, hr: &HrUser, lock: &KeyGuard<'_>) -> Result<Option<String>, DirectoryError> {
        let Some(id) = &hr.manager_id else { return Ok(None) };
        let key = UserId::EmployeeId(id.clone());
        let syncing = self.employee_syncing(lock, id);
        if let Some(found) = self.lookup(&key, &["1.1"]).await? {
            return Ok(Some(found.dn));
        }
        if self.is_dry_run() {
            return Ok(None);
        }
        // Waits when the manager's sync still runs; one that ended meanwhile may have
        // created the manager after our look-up was answered.
        if !(self.wait_for_employee(lock, id).await || syncing) {
            return Ok(None);
        }
        Ok(self.lookup(&key, &["1.1"]).await?.map(|e| e.dn))
    }

    fn note_manager(outcome: &mut SyncOutcome, hr: &HrUser, dn: Option<String>) {
        if let (Some(id), Some(dn)) = (&hr.manager_id, dn) {
            outcome.manager = ManagerOutcome::Resolved { employee_id: id.clone(), dn };
        }
    }

    async fn sync_new(
        &self,
        hr: &HrUser,
        cn: String,
        login: String,
        manager: Option<String>,
    ) -> Result<SyncOutcome, DirectoryError> {
        let mut attributes: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (attr, value) in &hr.attrs {
            if let Some(v) = value {
                attributes.insert(attr.clone(), vec![v.clone()]);
            }
        }
        attributes.insert("displayName".into(), vec![hr.display_name()]);
        if let Some(m) = &manager {
            attributes.insert("manager".into(), vec![m.clone()]);
        }
        let is_ad = self.kind == DirectoryKind::ActiveDirectory;
        let new = NewUser {
            name: cn,
            login: login.clone(),
            ou: None,
            attributes,
            password: None,
            // AD: a new account stays disabled until the helpdesk gives it a password.
            enabled: is_ad.then_some(false),
        };
        let entry = self.create_user(&new).await?;
        let mut outcome = self.outcome(SyncStatus::Created, entry.dn.clone(), login, hr);
        outcome.changes = entry.attributes.keys().filter(|k| *k != "objectClass").cloned().collect();
        Self::note_manager(&mut outcome, hr, manager);
        if hr.is_new == Some(false) {
            outcome
                .notes
                .push(format!("IsNewUser was 0 but no account had employee ID {}: created one", hr.employee_id));
        }
        Ok(outcome)
    }

    async fn sync_existing(
        &self,
        hr: &HrUser,
        entry: Entry,
        manager: Option<String>,
    ) -> Result<SyncOutcome, DirectoryError> {
        let login = entry.get(self.schema.login).unwrap_or_default().to_string();
        let mut outcome = self.outcome(SyncStatus::Unchanged, entry.dn.clone(), login, hr);
        if hr.is_new == Some(true) {
            outcome.notes.push(format!(
                "IsNewUser was 1 but {} already has employee ID {}: updated it",
                entry.dn, hr.employee_id
            ));
        }
        let display = hr.display_name();
        let mut wanted: BTreeMap<String, Vec<String>> =
            hr.attrs.iter().map(|(a, v)| (a.clone(), v.iter().cloned().collect())).collect();
        wanted.insert("displayName".into(), vec![display.clone()]);
        if let Some(m) = &manager {
            let current = entry.get("manager").and_then(|c| Dn::parse(c).ok());
            if current != Dn::parse(m).ok() {
                wanted.insert("manager".into(), vec![m.clone()]);
            }
        }
        Self::note_manager(&mut outcome, hr, manager);
        let mut changes = self.apply_changes(&entry, &wanted, "update_user").await?;

        let dn = Dn::parse(&entry.dn).map_err(|e| DirectoryError::InvalidInput(e.to_string()))?;
        // The CN follows a changed name; a CN an administrator chose while the name stayed
        // the same ("Doe, Jane") is left alone.
        if entry.get("displayName") != Some(display.as_str()) && cn_base(dn.leaf_value()) != display {
            if let Some(parent) = dn.parent() {
                let cn = self.free_cn(&parent, &display, Some(&entry.dn)).await?;
                if cn != dn.leaf_value() {
                    outcome.dn = self.rename_entry(&entry.dn, &cn).await?;
                    changes.push("cn".into());
                }
            }
        }

        if self.kind == DirectoryKind::ActiveDirectory {
            let disabled_now = entry
                .get("userAccountControl")
                .and_then(|v| v.parse().ok())
                .map(super::ad::is_disabled)
                .unwrap_or(false);
            if !hr.active {
                if self.apply_disabled(&entry, true).await? {
                    changes.push("userAccountControl".into());
                }
                outcome.disabled = true;
            } else if disabled_now {
                outcome.notes.push(
                    "the account is disabled; tripline does not enable accounts (give it a password, then enable it)"
                        .into(),
                );
            }
        } else if !hr.active {
            return Err(DirectoryError::Unsupported(format!(
                "employee {} is not active, but disabling accounts needs Active Directory's userAccountControl",
                hr.employee_id
            )));
        }
        if !changes.is_empty() {
            outcome.status = SyncStatus::Updated;
        }
        outcome.changes = changes;
        Ok(outcome)
    }

    /// A free CN in `users_ou` for a new person.
    async fn new_person_cn(&self, hr: &HrUser) -> Result<String, DirectoryError> {
        self.free_cn(&self.users_ou, &hr.display_name(), None).await
    }

    /// Creates the account of a new person named `cn`, with a free logon name. The name is
    /// searched and the account added under the lock of the name it derives from: a
    /// directory need not refuse a logon name in use (OpenLDAP's `uid` is not unique), so
    /// two namesakes synced at once in this process could otherwise both find `sam.same2`
    /// free. Across processes, only the directory can guarantee it: on OpenLDAP, the
    /// `unique` overlay on `uid`.
    async fn create_named(
        &self,
        hr: &HrUser,
        cn: String,
        manager: Result<Option<String>, DirectoryError>,
    ) -> Result<SyncOutcome, DirectoryError> {
        let base = self.login_base(hr);
        let _choosing = self.lock_login(&base).await;
        let login = self.free_login(base).await?;
        self.sync_new(hr, cn, login, manager?).await
    }

    /// A CN not used in `ou` (other than by `own`, the entry being renamed).
    ///
    /// Most names are free: one equality look-up (an index hit on any server) settles it.
    /// Only a name in use needs the prefix search that finds every numbered variant, which
    /// costs the server more (a substring index, whose keys many names share).
    async fn free_cn(&self, ou: &Dn, wanted: &str, own: Option<&str>) -> Result<String, DirectoryError> {
        let base = cut_cn(wanted, "");
        let own = own.and_then(|d| Dn::parse(d).ok());
        if !self.taken_cns(ou, Term::eq("cn", &base), own.as_ref()).await?.contains(&base.to_lowercase()) {
            return Ok(base);
        }
        let taken = self.taken_cns(ou, Term::prefix("cn", &cn_prefix(&base)), own.as_ref()).await?;
        unique_cn(&base, &taken).ok_or_else(|| {
            DirectoryError::InvalidInput(format!("no free name like `{base}` in {ou}: 999 entries already use it"))
        })
    }

    /// The CNs (lower case) of the entries directly in `ou` that have `cn`, `own` left out.
    async fn taken_cns(&self, ou: &Dn, cn: Term, own: Option<&Dn>) -> Result<HashSet<String>, DirectoryError> {
        let ou = ou.to_string();
        let lookup = Lookup {
            base: &ou,
            scope: Scope::OneLevel,
            constraint: None,
            terms: vec![cn],
            attrs: &["cn"],
            limit: None,
            missing_base_ok: true,
        };
        Ok(self
            .find(lookup)
            .await?
            .into_iter()
            .filter(|e| own.is_none() || Dn::parse(&e.dn).ok().as_ref() != own)
            .filter_map(|e| Dn::parse(&e.dn).ok().map(|d| d.leaf_value().to_lowercase()))
            .collect())
    }

    /// The logon name a new person would have if it were free: the HR username, else one
    /// derived from the name, else from the employee ID.
    fn login_base(&self, hr: &HrUser) -> String {
        let max = self.schema.login_max;
        let base = match &hr.username {
            Some(u) => sanitize_login(u, max),
            None => derive_login(&hr.first, &hr.last, max),
        };
        if base.is_empty() {
            return cut(&format!("user{}", slug(&hr.employee_id)), max);
        }
        base
    }

    /// `base`, or the first numbered variant of it, that no account uses as its logon name
    /// (or, on AD, UPN); like [`Directory::free_cn`], an equality look-up first and the
    /// prefix search only for a name in use.
    async fn free_login(&self, base: String) -> Result<String, DirectoryError> {
        let max = self.schema.login_max;
        let lower = base.to_lowercase();
        let mut exact = vec![Term::eq(self.schema.login, &lower)];
        if let Some(upn) = self.schema.upn {
            exact.push(Term::prefix(upn, &format!("{lower}@")));
        }
        if !self.taken_logins(exact).await?.contains(&lower) {
            return Ok(base);
        }
        // Every candidate up to `base999` starts with this prefix.
        let prefix = cut(&base, max.saturating_sub(3)).to_lowercase();
        let mut parts = vec![Term::prefix(self.schema.login, &prefix)];
        if let Some(upn) = self.schema.upn {
            parts.push(Term::prefix(upn, &prefix));
        }
        let taken = self.taken_logins(parts).await?;
        (1..1000u32)
            .map(|n| if n == 1 { base.clone() } else { with_suffix(&base, n, max) })
            .find(|c| !taken.contains(&c.to_lowercase()))
            .ok_or_else(|| {
                DirectoryError::InvalidInput(format!("no free logon name like `{base}`: 999 accounts use it"))
            })
    }

    /// The logon names (lower case) and UPN local parts of the entries that have one of
    /// `names`.
    async fn taken_logins(&self, names: Vec<Term>) -> Result<HashSet<String>, DirectoryError> {
        let mut attrs = vec![self.schema.login];
        attrs.extend(self.schema.upn);
        let lookup = Lookup {
            base: &self.base_text,
            scope: Scope::Subtree,
            constraint: None,
            terms: names,
            attrs: &attrs,
            limit: None,
            missing_base_ok: false,
        };
        Ok(self
            .find(lookup)
            .await?
            .iter()
            .flat_map(|e| {
                let login = e.values(self.schema.login).iter().map(|v| v.to_lowercase());
                let upn = self
                    .schema
                    .upn
                    .map(|u| e.values(u))
                    .unwrap_or(&[])
                    .iter()
                    .filter_map(|v| v.rsplit_once('@').map(|(local, _)| local.to_lowercase()));
                login.chain(upn).collect::<Vec<_>>()
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn logins_are_derived_ascii_and_short() {
        assert_eq!(derive_login("Zoë", "O'Brien, Jr.", 20), "zoe.obrienjr");
        assert_eq!(derive_login("José", "Müller-Lüdenscheidt", 20), "jose.muller-ludensch");
        assert_eq!(derive_login(" Anna ", "*)(objectClass=*", 20), "anna.objectclass");
        assert_eq!(derive_login("Łukasz", "Żółć", 20), "lukasz.zolc");
        assert_eq!(derive_login("Ab", "-", 20), "ab");
        assert_eq!(derive_login("Averyveryverylongfirstname", "X", 20), "averyveryverylongfir");
        assert!(derive_login("a", "b-c-d-e-f-g-h-i-j-k-l-m", 20).chars().count() <= 20);
        assert_eq!(derive_login("a", "bbbbbbbbbbbbbbbbb-x", 20), "a.bbbbbbbbbbbbbbbbb");
    }

    #[test]
    fn suffixes_keep_the_limit() {
        assert_eq!(with_suffix("zoe.obrien", 2, 20), "zoe.obrien2");
        assert_eq!(with_suffix("jose.muller-ludensch", 2, 20), "jose.muller-ludensc2");
        assert_eq!(with_suffix("jose.muller-ludensch", 12, 20), "jose.muller-ludens12");
        assert_eq!(with_suffix("abcdefghijklmnopqr.t", 10, 20), "abcdefghijklmnopqr10");
        assert_eq!(sanitize_login("j.doe@corp", 20), "j.doecorp");
        assert_eq!(sanitize_login("Zoë*O'B", 20), "ZoeOB");
    }

    #[test]
    fn cns_are_unique_and_recognised() {
        let taken: HashSet<String> = ["jane doe".into(), "jane doe (2)".into()].into();
        assert_eq!(unique_cn("Jane Doe", &taken).as_deref(), Some("Jane Doe (3)"));
        assert_eq!(unique_cn("John Doe", &taken).as_deref(), Some("John Doe"));
        let long = "x".repeat(80);
        let c = unique_cn(&long, &[long[..64].to_string()].into()).unwrap();
        assert_eq!(c.chars().count(), 64);
        assert!(c.ends_with(" (2)"));
        // Every candidate starts with the prefix searched for, also when a long name is cut
        // to make room for the suffix.
        for name in ["Jane Doe", &"y".repeat(57), &"z".repeat(58), &format!("{} x", "w".repeat(60)), &long[..64]] {
            let prefix = cn_prefix(name);
            for n in [1u32, 2, 9, 10, 99, 100, 999] {
                let c = if n == 1 { cut_cn(name, "") } else { cut_cn(name, &format!(" ({n})")) };
                assert!(c.starts_with(&prefix), "{c:?} does not start with {prefix:?}");
            }
        }
        assert_eq!(cn_prefix("Jane Doe"), "Jane Doe");
        assert_eq!(cn_base("Jane Doe (12)"), "Jane Doe");
        assert_eq!(cn_base("Jane (Jr) Doe"), "Jane (Jr) Doe");
        assert_eq!(cn_base("Jane ()"), "Jane ()");
    }

    #[test]
    fn hr_records_are_read_and_checked() {
        let mapping =
            vec![("EmployeeId".to_string(), "employeeID".to_string()), ("JobTitle".to_string(), "title".to_string())];
        let rec = json!({"EmployeeId": 42, "FirstName": "  Zoë ", "LastName": "O'Brien,   Jr.", "JobTitle": "",
                         "Active": "false", "IsNewUser": 1, "ManagerEmployeeId": null});
        let hr = HrUser::parse(rec.as_object().unwrap(), &mapping).unwrap();
        assert_eq!(hr.employee_id, "42");
        assert_eq!(hr.display_name(), "Zoë O'Brien, Jr.");
        assert!(!hr.active);
        assert_eq!(hr.is_new, Some(true));
        assert_eq!(hr.manager_id, None);
        assert_eq!(hr.attrs, vec![("employeeID".into(), Some("42".into())), ("title".into(), None)]);

        let missing = json!({"EmployeeId": "1", "FirstName": "A"});
        let e = HrUser::parse(missing.as_object().unwrap(), &mapping).unwrap_err();
        assert_eq!(e.to_string(), "the Flex HR record has no LastName");
        let control = json!({"EmployeeId": "1", "FirstName": "A\u{0}", "LastName": "B"});
        assert!(HrUser::parse(control.as_object().unwrap(), &mapping).is_err());
        let bad_flag = json!({"EmployeeId": "1", "FirstName": "A", "LastName": "B", "Active": "maybe"});
        assert!(HrUser::parse(bad_flag.as_object().unwrap(), &mapping).is_err());
        let lower = json!({"employeeid": "7", "firstname": "A", "lastname": "B"});
        assert_eq!(HrUser::parse(lower.as_object().unwrap(), &mapping).unwrap().employee_id, "7");
    }

    #[test]
    fn summaries_name_what_matters() {
        let o = SyncOutcome {
            status: SyncStatus::Updated,
            dn: "CN=Jane Doe,OU=Staff,DC=example,DC=test".into(),
            login: "jane.doe".into(),
            changes: vec!["title".into(), "department".into()],
            manager: ManagerOutcome::Unresolved { employee_id: "E9".into() },
            disabled: false,
            base_dn: "DC=example,DC=test".into(),
            employee_id: "E1".into(),
            notes: vec![],
            dry_run: false,
            mode: SyncMode::CreateAndUpdate,
        };
        assert!(!o.is_complete());
        let s = o.summary();
        assert!(
            s.starts_with("updated CN=Jane Doe,OU=Staff,DC=example,DC=test (username jane.doe) in DC=example,DC=test"),
            "{s}"
        );
        assert!(s.contains("changed: title, department") && s.contains("must be entered manually"), "{s}");
        let v = serde_json::to_value(&o).unwrap();
        assert_eq!(v["status"], "updated");
        assert_eq!(v["sAMAccountName"], "jane.doe");
        assert_eq!(v["manager"]["status"], "unresolved");
        assert_eq!(v["mode"], "create_and_update");

        let kept = SyncOutcome {
            status: SyncStatus::LeftAlone,
            manager: ManagerOutcome::NotGiven,
            mode: SyncMode::CreateOnly,
            ..o.clone()
        };
        assert!(kept.is_complete(), "create_only: an existing user closes the ticket");
        assert_eq!(
            kept.summary(),
            "mode create_only: user jane.doe (CN=Jane Doe,OU=Staff,DC=example,DC=test) already exists in \
             DC=example,DC=test and was left as it is; nothing was changed"
        );
        let absent = SyncOutcome { status: SyncStatus::NotCreated, mode: SyncMode::UpdateOnly, ..kept };
        assert!(!absent.is_complete(), "update_only: a person not in the directory leaves the ticket open");
        assert_eq!(
            absent.decision().unwrap(),
            "mode update_only: no account in DC=example,DC=test has employee ID E1, and this mode creates none"
        );
        assert_eq!(serde_json::to_value(&absent).unwrap()["status"], "not_created");
    }

    #[test]
    fn call_options_name_what_is_wrong() {
        let opts = |v: Value| SyncOptions::from_json(v.as_object().unwrap());
        assert_eq!(opts(json!({})).unwrap().mode, None);
        assert_eq!(opts(json!({"mode": "update_only"})).unwrap().mode, Some(SyncMode::UpdateOnly));
        assert_eq!(opts(json!({"mode": "create_only"})).unwrap().mode, Some(SyncMode::CreateOnly));
        let e = opts(json!({"mdoe": "update_only"})).unwrap_err().to_string();
        assert_eq!(e, "unknown option `mdoe`: the only option is mode; did you mean `mode`?");
        let e = opts(json!({"mode": "update-only"})).unwrap_err().to_string();
        assert!(
            e.starts_with("unknown mode `update-only`: the modes are create_and_update, create_only, update_only"),
            "{e}"
        );
        assert!(e.ends_with("did you mean `update_only`?"), "{e}");
        let e = opts(json!({"mode": 1})).unwrap_err().to_string();
        assert!(e.contains("option mode must be one of"), "{e}");
        let e = opts(json!({"dry_run": true})).unwrap_err().to_string();
        assert!(e.starts_with("unknown option `dry_run`"), "{e}");
    }
}
