//! tripline: a rule and script engine for IT service management and identity automation.
//!
//! Administrators describe *when* something should happen in rule files (`rules/*.toml`:
//! an entity, conditions, a script) and *what* should happen in Rhai scripts
//! (`scripts/*.rhai`); tripline is the host runtime that gives those scripts a record store
//! with tickets, scheduled jobs, inbound webhooks, authenticated HTTP connections and Active
//! Directory / LDAP operations.
//!
//! # Embedding
//!
//! tripline is also a library. A program builds a [`Runtime`](runtime::Runtime) from a
//! configuration file or in code, registers its own host functions beside the built-in
//! `api`, feeds it events and reads the runs back:
//!
//! ```no_run
//! use tripline::config::{Config, EngineConfig};
//! use tripline::record::{from_value, EventKind};
//! use tripline::runtime::Runtime;
//! use tripline::script::Api;
//!
//! let config = Config::with_engine(EngineConfig {
//!     rules_dir: "rules".into(),
//!     scripts_dir: "scripts".into(),
//!     data_dir: "data".into(),
//!     ..EngineConfig::default()
//! });
//! let runtime = Runtime::builder()
//!     .config(config)
//!     .register(|engine| {
//!         // Scripts can now call `api.greet("Ann")`.
//!         engine.register_fn("greet", |api: &mut Api, who: &str| {
//!             api.ctx().log("info", &format!("hello {who}"));
//!         });
//!     })
//!     .build()?;
//! let record = from_value(serde_json::json!({"Category": "Password reset"}))?;
//! for run in runtime.fire("ticket", EventKind::Created, record)? {
//!     println!("{} {}", run.rule, run.status.as_str());
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! `examples/embed.rs` is a complete program.
//!
//! # Layout
//!
//! Events flow one way: ingress (the command line, webhooks, jobs) -> store -> dispatch ->
//! rules -> scripts -> effects (the store, directories, connections, notifications).
//!
//! | stage | module | owns |
//! |---|---|---|
//! | ingress | [`cli`] | the command line: `check`, `fire`, `test`, `replay`, `job run`, ...; `tripline run` starts the daemon |
//! | | [`daemon`] | `tripline run`: the loop that ties the rest together; jobs run on the scheduler's ticks |
//! | | [`cases`] | `tripline test --cases DIR`: an admin's regression cases of rules, run dry |
//! | | [`console`] | `[console]`: the admin console, server-rendered pages for people behind a login |
//! | | [`server`] | `[server]`: the HTTP server: router, `/healthz`, `/metrics`, the ingestion of deliveries |
//! | | [`webhook`] | `[webhooks.NAME]`: a delivery's authentication (HMAC, bearer) and the record it becomes |
//! | | [`scheduler`] | `[jobs.NAME]`: cron schedules and the loop that starts jobs on them |
//! | | [`watch`] | file watching -> reload requests |
//! | store | [`store`] | the `Store` trait and its SQLite implementation: records, the event queue, runs |
//! | dispatch | [`dispatch`] | stored events to worker threads; [`Runtime::fire`](runtime::Runtime::fire) and `drain` |
//! | rules | [`runtime`] | an event's rules run, retried, dry-run and committed; where rules and jobs meet the configuration; the embedding API |
//! | | [`catalog`] | rules and scripts loaded from their folders, swapped as one |
//! | | [`rule`] | rule files, conditions, the indexed [`rule::RuleSet`] |
//! | scripts | [`script`] | the shared Rhai engine, `[limits]`, the `api` host object (one Rhai plugin module per area), the checks of scripts, definition files for editors |
//! | effects | [`store`] | what runs write, in one transaction with the run |
//! | | [`directory`] | `[directories.NAME]`: Active Directory / LDAP |
//! | | [`connection`] | `[connections.NAME]`: authenticated HTTP connections, their OAuth2 tokens in the store |
//! | | [`notification`] | `[notify.NAME]`: outbound notifications, failure and stale-job notices |
//! | configuration | [`config`] | `tripline.toml`, every section built into [`config::Config`]; `[engine]` |
//! | across | [`metrics`] | the Prometheus counters every subsystem records into |
//! | leaves | [`record`], [`secret`], [`diag`], [`de`], [`class`], [`memory`] | records and events; secrets and their redaction; problems at their place; deserialisation helpers; failure classes; memory accounting |
//!
//! Code dependencies point one way too: each line below imports only from the lines under it
//! (`tests/it/layering.rs` keeps it so, and the leaves import nothing of the crate but
//! `secret`, which reports into `diag`):
//!
//! - [`cli`]
//! - [`daemon`], [`cases`]
//! - [`console`]
//! - [`dispatch`]
//! - [`runtime`]
//! - [`catalog`]
//! - [`config`], [`rule`]
//! - [`script`]
//! - [`notification`], [`server`]
//! - [`connection`], [`directory`], [`metrics`], [`scheduler`], [`webhook`]
//! - [`secret`], [`store`]
//! - [`class`], [`de`], [`diag`], [`memory`], [`record`], [`tls`], [`watch`]: the leaves

pub mod cases;
pub mod catalog;
pub mod class;
pub mod cli;
pub mod config;
pub mod connection;
pub mod console;
pub mod daemon;
pub mod de;
pub mod diag;
pub mod directory;
pub mod dispatch;
pub mod memory;
pub mod metrics;
pub mod notification;
pub mod record;
pub mod rule;
pub mod runtime;
pub mod scheduler;
pub mod script;
pub mod secret;
pub mod server;
pub mod store;
pub mod tls;
pub mod watch;
pub mod webhook;
