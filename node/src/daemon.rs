//! The node daemon: wires store, engine, adapters, agent and metrics. Placeholder.
