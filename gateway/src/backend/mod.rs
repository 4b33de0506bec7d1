//! Built-in upstreams for demos and tests.
//!
//! [`httpbin`] is an httpbin-compatible server, so the walkthrough runs without Python.

pub mod httpbin;
