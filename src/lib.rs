//! tripline: a rule and script engine for IT service management and identity automation.

pub mod config;
pub mod connection;
pub mod diag;
pub mod directory;
pub mod notification;
pub mod scheduler;
pub mod webhook;
pub mod record;
pub mod rule;
pub mod store;
pub mod script;
pub mod catalog;
pub mod runtime;
pub mod cli;
pub mod daemon;
