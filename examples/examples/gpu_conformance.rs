//! Runs the PyTorch conformance cases of the model, loss, queue and optimizer crates on any
//! `--device` and prints one PASS/FAIL line per case.
//!
//! ```text
//! cargo run --release -p ssl-examples --example gpu_conformance -- [--device SPEC] [--dir DIR]
//!     [--curve-steps N] [--json PATH]
//! ```
//!
//! The options, cases and exit status: [`ssl_examples::conformance`].

fn main() {
    std::process::exit(ssl_examples::conformance::main(std::env::args().skip(1)));
}
