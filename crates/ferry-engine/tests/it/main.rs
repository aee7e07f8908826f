//! Integration tests of the engine against the real test origin on loopback.
#![allow(clippy::unwrap_used)]

mod fixture;

mod basics;
mod faults;
mod files;
mod network;
mod resume;
mod segments;
mod upload;
