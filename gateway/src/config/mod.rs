//! Istio YAML → one validated, immutable configuration snapshot.
