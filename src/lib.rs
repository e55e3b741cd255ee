//! tripline: a rule and script engine for IT service management and identity automation.

pub mod catalog;
pub mod cli;
pub mod config;
pub mod connection;
pub mod daemon;
pub mod diag;
pub mod directory;
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
