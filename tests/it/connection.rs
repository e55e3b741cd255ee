//! Connections against local HTTP servers.
