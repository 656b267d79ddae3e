//! `pier-dataplane`: serves Pier routes.

use clap::Parser;
use pier_dataplane::{Args, Dataplane, LogFormat};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)?;
    // Colours only for a terminal; JSON with the message and fields at the
    // top level of each line, as log collectors index them.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match args.log_format {
        LogFormat::Json => logs.json().flatten_event(true).init(),
        LogFormat::Text => logs.init(),
    }
    pier_dataplane::tune_allocator();
    Dataplane::bind(args)?.run(pier_dataplane::termination())?;
    Ok(())
}
