//! The `mhcl` command: `mhcl pretrain`, `mhcl lincls`, `mhcl split`, `mhcl synthetic`.
//!
//! Errors print as one line, `error: <message>`, and exit with status 1 (2 for a command line
//! clap cannot parse); Ctrl-C during training saves a checkpoint and exits with status 130.

fn main() {
    std::process::exit(mhcl::cli::main_from(std::env::args_os()));
}
