//! The integration tests: one binary, with a harness in `common/` that starts real servers
//! (Samba AD DC, slapd, local HTTP peers) and makes temp folders.

mod cli;
mod common;
mod connection;
mod daemon;
mod directory;
mod directory_guards;
mod flexhr;
mod flexjob;
mod hostile;
mod notification;
mod outage;
mod reliability;
mod scheduler;
mod secrets;
mod webhook;
