//! The daemon as applications meet it: the real `ferryd` binary, the test origin, and
//! protocol clients (in Rust, and `client.py` for another process and another uid).
#![allow(clippy::unwrap_used)]

mod fixture;

mod access;
mod admin;
mod durability;
mod groups;
mod journal;
mod launch;
mod migrations;
mod options;
mod resume;
mod retention;
mod scheduling;
mod tasks;
mod uploads;
