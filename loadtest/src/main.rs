//! tandem-loadtest: drives WHIP publishers, WHEP viewers and sync clients against a server.
//! (The generator itself arrives with the load-testing issue; this is its entry point.)

fn main() {
    eprintln!("tandem-loadtest: not built yet; see README.md (Load testing)");
    std::process::exit(2);
}
