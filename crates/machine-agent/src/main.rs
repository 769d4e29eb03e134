//! `ccr-agent`: not yet implemented beyond this entry point (see the README's status).
fn main() {
    eprintln!("ccr-agent: the daemon is not implemented yet");
    std::process::exit(2);
}
