#![allow(dead_code)]
//! Shared by the tests of this crate; each test uses part of it.

pub mod netns;
