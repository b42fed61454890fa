//! `por`: the Proof of Response command line.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

/// Proof of Response node and tools.
#[derive(Parser, Debug)]
#[command(name = "por", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run scenario files in the deterministic simulator and print the timeline as JSON
    /// lines (`t_ms`, `node`, `kind`, ...), ending with `{"kind":"final","balances":...}`.
    ///
    /// A directory runs every `*.toml` in it, each introduced by a
    /// `{"kind":"scenario",...}` line.
    Simulate {
        /// Scenario files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Exit non-zero if any invariant is broken (the default prints and continues).
        #[arg(long)]
        strict: bool,
    },
}

fn scenario_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut in_dir: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading directory {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "toml"))
                .collect();
            in_dir.sort();
            if in_dir.is_empty() {
                bail!("{}: no *.toml scenario files", p.display());
            }
            files.extend(in_dir);
        } else {
            files.push(p.clone());
        }
    }
    Ok(files)
}

fn simulate(path: &Path, announce: bool) -> Result<usize> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let report =
        por_testnet::run_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if announce {
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        println!("{}", serde_json_line(&name, path));
    }
    print!("{}", report.to_json_lines());
    for v in &report.violations {
        eprintln!("{}: invariant broken: {v}", path.display());
    }
    Ok(report.violations.len())
}

fn serde_json_line(name: &str, path: &Path) -> String {
    format!(
        "{{\"kind\":\"scenario\",\"name\":{:?},\"file\":{:?}}}",
        name,
        path.display().to_string()
    )
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Simulate { paths, strict } => {
            let files = scenario_files(&paths)?;
            let announce = files.len() > 1;
            let mut broken = 0;
            for f in &files {
                broken += simulate(f, announce)?;
            }
            if strict && broken > 0 {
                bail!("{broken} invariant violations");
            }
        }
    }
    Ok(())
}
