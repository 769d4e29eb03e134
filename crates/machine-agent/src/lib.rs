//! Library half of the binary: `main.rs` parses arguments and calls into here.
