//! rustls server and client configurations built from credentials.
