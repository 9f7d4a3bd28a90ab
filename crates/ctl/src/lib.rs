//! The client side of Bulkhead's management API: finding a running VM's control socket,
//! sending it one request and reading the reply ([`client`]), and `bulkhead ctl` ([`cli`]).
//!
//! The protocol and the server that answers in the VM's core are `bulkhead_api`'s; this crate
//! runs only in the processes that ask.

pub mod cli;
pub mod client;

pub use client::{request, ClientError};

/// An error and its causes as one line: "what failed: because: because".
pub fn describe(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        line.push_str(": ");
        line.push_str(&e.to_string());
        cause = e.source();
    }
    line
}
