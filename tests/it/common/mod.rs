//! The test harness: temp folders, the real binary, and real servers on loopback.
#![allow(dead_code)]

pub mod browser;
pub mod daemon;
pub mod directory_servers;
pub mod http;
pub mod postgres;
pub mod project;
pub mod smtp;

/// A run's error without the script place it starts with (`/tmp/.../s.rhai:1:5: `), for
/// tests about the rest of the message.
pub fn without_place(error: &str) -> &str {
    match error.find(".rhai:") {
        Some(i) => {
            let rest = &error[i + ".rhai:".len()..];
            let mut parts = rest.splitn(3, ':');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(l), Some(c), Some(msg))
                    if l.bytes().all(|b| b.is_ascii_digit()) && c.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    msg.trim_start()
                }
                _ => error,
            }
        }
        None => error,
    }
}
