//! The admin listener: metrics, health, config dump.
