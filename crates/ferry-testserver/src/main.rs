//! `ferry-testserver [--bind ADDR:PORT] [--tls]`: serves the test endpoints until
//! SIGTERM/SIGINT, after printing `listening on <base url>` on stdout.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use ferry_testserver::TestServer;

const USAGE: &str = "usage: ferry-testserver [--bind ADDR:PORT] [--tls]";

fn main() -> ExitCode {
    let mut bind: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut tls = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--tls" => tls = true,
            "--bind" => match args.next().map(|a| a.parse()) {
                Some(Ok(addr)) => bind = addr,
                _ => return usage_error("--bind needs ADDR:PORT"),
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => return usage_error(&format!("unexpected argument {other:?}")),
        }
    }

    let server = match TestServer::start_on(bind, tls) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("ferry-testserver: cannot start on {bind}: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Scripts block on this line to learn the port; it must not sit in a buffer.
    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "listening on {}", server.url(""))
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    drop(stdout);

    match wait_for_termination() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry-testserver: waiting for signals failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("ferry-testserver: {msg}\n{USAGE}");
    ExitCode::from(2)
}

/// Blocks until SIGINT or SIGTERM, so the server is dropped (and exits 0) on both.
fn wait_for_termination() -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate())?;
            tokio::select! {
                r = tokio::signal::ctrl_c() => r,
                _ = term.recv() => Ok(()),
            }
        }
        #[cfg(not(unix))]
        {
            tokio::signal::ctrl_c().await
        }
    })
}
