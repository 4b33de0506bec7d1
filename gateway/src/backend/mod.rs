//! Built-in upstreams for demos and tests.
