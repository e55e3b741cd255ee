//! Where the directory audit trail starts: every change a [`Directory`] makes, and every
//! change a dry-run directory would make, is reported as a [`Change`] to the [`Sink`] of the
//! run executing on the current thread.
//!
//! Why a thread's sink and not an argument: a directory is shared by every run, and scripts
//! reach it through host functions that know nothing of auditing; the run's thread is what
//! ties an operation to its run. A script runs on one thread, and its host calls wait on
//! that same thread (`Handle::block_on` polls the future there), so a change is always
//! reported where its run installed the sink ([`install`], done by the runtime around each
//! script). A change made outside any run (a program using [`Directory`] directly) has no
//! sink: it is logged, not audited.
//!
//! The report is made right after the directory acknowledged the change (or, in dry-run
//! mode, when it is planned), never before, and it never carries a password.
//!
//! [`Directory`]: super::Directory

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::store::AuditAttr;

/// One change to one entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The `[directories.NAME]`.
    pub directory: String,
    /// The entry's DN (for a group membership, the user's).
    pub dn: String,
    /// The operation (`create_user`, `update_user`, ...).
    pub operation: String,
    /// Each attribute's values before and after.
    pub attributes: Vec<AuditAttr>,
    /// What the attributes do not say (a password reset, a dry run's sentence).
    pub detail: Option<String>,
    /// Planned by a dry-run directory: nothing was changed.
    pub planned: bool,
    pub at: DateTime<Utc>,
}

/// Receives the changes of the run on this thread.
pub trait Sink: Send + Sync {
    fn record(&self, change: Change);
}

thread_local! {
    static SINK: RefCell<Option<Arc<dyn Sink>>> = const { RefCell::new(None) };
}

/// The sink installed by [`install`]; the one before it is back when this is dropped.
pub struct Installed(Option<Arc<dyn Sink>>);

/// Makes `sink` receive the changes made on this thread until the returned guard is dropped.
pub fn install(sink: Arc<dyn Sink>) -> Installed {
    Installed(SINK.with(|s| s.borrow_mut().replace(sink)))
}

impl Drop for Installed {
    fn drop(&mut self) {
        let previous = self.0.take();
        SINK.with(|s| *s.borrow_mut() = previous);
    }
}

/// Reports a change to the sink of this thread's run.
pub(crate) fn report(change: Change) {
    match SINK.with(|s| s.borrow().clone()) {
        Some(sink) => sink.record(change),
        None => tracing::debug!(
            directory = %change.directory,
            dn = %change.dn,
            operation = %change.operation,
            planned = change.planned,
            "A directory change outside any run: it is not in the audit trail."
        ),
    }
}

impl Change {
    /// A change the directory made now.
    pub(crate) fn made(directory: &str, dn: &str, operation: &str, attributes: Vec<AuditAttr>) -> Change {
        Change {
            directory: directory.to_string(),
            dn: dn.to_string(),
            operation: operation.to_string(),
            attributes,
            detail: None,
            planned: false,
            at: Utc::now(),
        }
    }

    pub(crate) fn detail(mut self, detail: impl Into<String>) -> Change {
        self.detail = Some(detail.into());
        self
    }

    /// A change a dry-run directory planned: the values it would write (what is there now
    /// is not read).
    pub(crate) fn planned(
        directory: &str,
        target: &str,
        operation: &str,
        attributes: &BTreeMap<String, Vec<String>>,
        description: &str,
    ) -> Change {
        let attributes = attributes
            .iter()
            .map(|(k, v)| AuditAttr { attribute: k.clone(), before: None, after: v.clone() })
            .collect();
        Change { planned: true, ..Change::made(directory, target, operation, attributes).detail(description) }
    }
}

/// One attribute's values before and after.
pub(crate) fn attr(name: &str, before: &[String], after: &[String]) -> AuditAttr {
    AuditAttr { attribute: name.to_string(), before: Some(before.to_vec()), after: after.to_vec() }
}
