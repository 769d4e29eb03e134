//! `relay-bridge`: not yet implemented beyond this entry point (see the README's status).
fn main() {
    eprintln!("relay-bridge: not implemented yet");
    std::process::exit(2);
}
