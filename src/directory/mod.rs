//! LDAP and Active Directory: the `[directories.NAME]` configuration, one shared connection
//! per directory, the user and group operations scripts call, and the Flex HR sync.
//!
//! Layout:
//! - [`config`]: `DirectoryConfig` as written, its validation, the HR attribute mapping;
//!   `DirectoryConfig::build` (in `handle`) reports its problems and makes the [`Directory`].
//! - `handle`: [`Directory`], the runtime: connection or dry-run record, search plumbing.
//! - `conn`: opening, binding, sharing (pipelining) and reopening the connection.
//! - `users`, `groups`: the operations; [`flexhr`]: `ProcessFlexHrUserOnAD`'s directory part.
//! - [`json`]: operation arguments from script values.
//! - [`dn`], [`filter`]: escaping (RFC 4514 / RFC 4515) and DN parsing; [`ident`]: how a user
//!   or group is named; [`ad`]: userAccountControl, unicodePwd, AD error codes; `schema`:
//!   attribute names per kind of directory; [`error`]: errors and their classification.
//!
//! Every change, made or planned, is reported to the audit trail of the run that made it
//! ([`audit`]).
//!
//! Dry-run mode (`dry_run = true`, or [`Directory::dry_run`]) never connects: reads find
//! nothing, writes succeed and are recorded as [`PlannedChange`]s ("would create CN=...")
//! that [`Directory::planned_changes`] returns. A fresh install starts in this mode.

pub mod ad;
pub mod audit;
mod batch;
pub mod config;
mod conn;
pub mod dn;
pub mod error;
pub mod filter;
pub mod flexhr;
mod groups;
mod handle;
pub mod ident;
pub mod json;
mod schema;
mod users;

pub use config::{default_mapping, DirectoryConfig, DirectoryKind, SyncMode, Timeout};
pub use error::DirectoryError;
pub use flexhr::{ManagerOutcome, SyncOptions, SyncOutcome, SyncStatus};
pub use handle::{Directory, Entry, PlannedChange, SearchRequest, SearchScope};
pub use ident::{GroupId, UserId};
pub use json::attributes_from_json;
pub use users::NewUser;
