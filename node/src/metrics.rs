//! Prometheus text metrics over HTTP. Placeholder.
