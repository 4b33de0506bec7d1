//! Listeners, the inbound terminator and HTTP/TCP forwarding.
