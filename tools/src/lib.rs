//! Shared code of the command-line tools: the bundle description of `bpdump` ([`dump`]).

pub mod dump;
