//! Standard output as a Unix tool writes it: a reader that goes away early
//! (`por simulate … | head`) ends the process quietly and successfully, where
//! `println!` would panic on the broken pipe. Any other failure to write is reported
//! on standard error and exits with status 1: output that was asked for and lost is
//! not a success.

use std::io::{ErrorKind, Write};

/// Writes `args` (and a newline if `newline`) to standard output and flushes it.
pub(crate) fn write(args: std::fmt::Arguments<'_>, newline: bool) {
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| {
            if newline {
                out.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|()| out.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("por: cannot write to standard output: {e}");
            std::process::exit(1);
        }
    }
}
