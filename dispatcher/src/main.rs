//! Placeholder; see the dispatcher issue.
fn main() {}
