//! The agent protocol: applications register endpoints, send and receive bundles through the
//! node (placeholder until the agent helper's implementation lands).
