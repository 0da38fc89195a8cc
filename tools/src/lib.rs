//! Shared helpers for the command-line tools.
