//! `pier-dataplane`: serves Pier routes.

use clap::Parser;
use pier_dataplane::{Args, Dataplane, LogFormat};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)?;
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match args.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.init(),
    }
    pier_dataplane::tune_allocator();
    Dataplane::bind(args)?.run(pier_dataplane::termination())?;
    Ok(())
}
