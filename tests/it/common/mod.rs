//! The test harness: temp folders, the real binary, and real servers on loopback.
#![allow(dead_code)]

pub mod daemon;
pub mod smtp;
