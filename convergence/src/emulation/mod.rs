//! Link emulation (work in progress; API follows in the next commit).
