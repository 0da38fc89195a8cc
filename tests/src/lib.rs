//! Cross-crate conformance and end-to-end tests live in `tests/`.
