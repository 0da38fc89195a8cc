//! `dtnd` configuration (TOML). Placeholder until the daemon helper's implementation lands.
