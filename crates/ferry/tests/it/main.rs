//! The `ferry` library as applications use it: background sessions against the real
//! `ferryd` (started by the library), in-process sessions, and the test origin.
#![allow(clippy::unwrap_used)]

mod fixture;

mod background;
mod behaviour;
mod daemon;
mod examples;
mod in_process;
mod seeds;
mod upload;
