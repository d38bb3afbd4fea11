//! The `mhcl` command: `mhcl pretrain`, `mhcl lincls`, `mhcl split`, `mhcl synthetic`.
//!
//! Errors print as one line, `error: <message>`, and exit with status 1 (2 for a command line
//! clap cannot parse); Ctrl-C during training saves a checkpoint and exits with status 130.

use mhcl::MhclError;

fn main() {
    let cli = match mhcl::cli::parse_from(std::env::args_os()) {
        Ok(cli) => cli,
        Err(msg) => {
            eprintln!("error: {msg}");
            std::process::exit(2);
        }
    };
    match mhcl::cli::run(cli) {
        Ok(()) => {}
        Err(MhclError::Interrupted { checkpoint }) => {
            match checkpoint {
                Some(p) => eprintln!(
                    "interrupted: checkpoint saved to {0}; continue with --resume {0}",
                    p.display()
                ),
                None => eprintln!("interrupted"),
            }
            std::process::exit(130);
        }
        Err(e) => {
            let msg = e.to_string().replace('\n', " ");
            eprintln!("error: {msg}");
            std::process::exit(1);
        }
    }
}
