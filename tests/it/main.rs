//! The integration tests: one binary, with a harness in `common/` that starts real servers
//! (Samba AD DC, slapd, local HTTP peers) and makes temp folders.

mod audit;
mod cases;
mod cli;
mod common;
mod connection;
mod console;
mod daemon;
mod deadline;
mod definitions;
mod directory;
mod directory_guards;
mod dispatch;
mod flexhr;
mod flexjob;
mod hardening;
mod hostile;
mod install;
mod layering;
mod lists;
mod notification;
mod origin;
mod outage;
mod reliability;
mod revoke;
mod scaleout;
mod scheduler;
mod script_checks;
mod secrets;
mod seeds;
mod store;
mod trust;
mod unsafe_requests;
mod webhook;
