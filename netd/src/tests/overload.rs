//! Overload, isolation and accounting tests (filled in below).
