//! UDP convergence-layer adapter (work in progress).
