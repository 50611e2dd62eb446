//! The `ptpchat` binary: parse flags, set up logging, run the command, and turn its error
//! into an exit code (the only place that happens).

use clap::Parser;
use ptpchat::cli::{self, exit, Cli};

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print to stdout and exit 0; usage errors exit 2.
            let _ = e.print();
            std::process::exit(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    init_logging(cli.verbose, cli.quiet);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ptpchat: cannot start the async runtime: {e}");
            std::process::exit(exit::ERROR);
        }
    };
    let code = match runtime.block_on(cli::execute(cli)) {
        Ok(()) => exit::OK,
        Err(e) => {
            if !e.message.is_empty() {
                eprintln!("ptpchat: {}", e.message);
            }
            cli::exit_code(e.kind)
        }
    };
    std::process::exit(code);
}

fn init_logging(verbose: u8, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "ptpchat=info,warn",
        (false, 1) => "ptpchat=debug,info",
        (false, _) => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
