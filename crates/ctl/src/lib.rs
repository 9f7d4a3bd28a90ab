//! The client side of Bulkhead's management API: finding a running VM's control socket,
//! sending it one request and reading the reply ([`client`]), and `bulkhead ctl` ([`cli`]).
//!
//! The protocol and the server that answers in the VM's core are `bulkhead_api`'s; this crate
//! runs only in the processes that ask.

pub mod cli;
pub mod client;

pub use client::{request, ClientError};
