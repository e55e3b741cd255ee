//! The test harness: temp folders, the real binary, and real servers on loopback.
#![allow(dead_code)]

pub mod daemon;
pub mod directory_servers;
pub mod http;
pub mod project;
pub mod smtp;
