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
//! | module | owns |
//! |---|---|
//! | [`config`] | `tripline.toml` as written, validated into [`config::Config`]; secrets |
//! | [`diag`] | problems with their place, printed `path:line:col: message` |
//! | [`record`] | records, events, submitted input |
//! | [`rule`] | rule files, conditions, the indexed [`rule::RuleSet`] |
//! | [`script`] | the shared Rhai engine, sandbox limits, the `api` host object, the checks of scripts |
//! | [`catalog`] | rules and scripts loaded from their folders, swapped as one |
//! | [`runtime`] | dispatch: events to rules to runs, retries, dry runs; the embedding API |
//! | [`store`] | the `Store` trait and its SQLite implementation |
//! | [`directory`] | Active Directory / LDAP |
//! | [`connection`] | authenticated HTTP connections |
//! | [`scheduler`] | cron jobs |
//! | [`webhook`] | inbound HTTP: webhooks, `/healthz`, `/metrics` |
//! | [`notification`] | outbound notifications (webhook, email), failure and stale-job notices |
//! | [`watch`] | file watching -> reload requests |
//! | [`metrics`] | the Prometheus counters every subsystem records into |
//! | [`daemon`] | `tripline run`: the loop that ties them together |
//! | [`cli`] | the command line |

pub mod catalog;
pub mod class;
pub mod cli;
pub mod config;
pub mod connection;
pub mod daemon;
pub mod diag;
pub mod directory;
pub mod dispatch;
pub mod jobs;
pub mod memory;
pub mod metrics;
pub mod notification;
pub mod record;
pub mod rule;
pub mod runtime;
pub mod scheduler;
pub mod script;
pub mod store;
pub mod watch;
pub mod webhook;
