//! Examples live beside this crate: `cargo run -p kbatch-examples --example <name>`.
