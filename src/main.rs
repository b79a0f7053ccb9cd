//! The `painn` command line.

use clap::Parser;

/// PaiNN machine-learned force fields for molecular dynamics.
#[derive(Parser)]
#[command(name = "painn", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Print the version of the engine.
    Version,
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Version) | None => println!("painn {}", painn::VERSION),
    }
}
