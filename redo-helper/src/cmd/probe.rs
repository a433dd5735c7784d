//! `redo-helper probe`: connects to the compute exactly as `run` does (same connection
//! string, TLS, authentication rules and server version check), reports what protects the
//! connection and what server it reached, and disconnects. Nothing is created on the
//! server: a way to check a secure configuration before the first `run`.

use crate::stream::connection::PgConnection;
use crate::stream::conninfo::{ConnInfo, PasswordSource};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct ProbeArgs {
    /// libpq connection string or URI of the compute, as for `run --connect`.
    #[arg(long = "connect", value_name = "CONNINFO")]
    connect: String,
}

pub fn main(args: ProbeArgs) -> ExitCode {
    let conninfo = match ConnInfo::parse(&args.connect) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("redo-helper: {e}");
            return ExitCode::from(2);
        }
    };
    if conninfo.password_source == Some(PasswordSource::ConnString) {
        eprintln!(
            "redo-helper: warning: the --connect connection string holds a password: every local user can read it in `ps`; put it in ~/.pgpass (mode 0600) or a file named by PGPASSFILE instead"
        );
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("redo-helper: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(probe(&conninfo)) {
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("redo-helper: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn probe(info: &ConnInfo) -> Result<Vec<String>, String> {
    let mut conn = PgConnection::connect_replication(info)
        .await
        .map_err(|e| e.to_string())?;
    let mut lines = vec![format!("connected to {info}")];
    lines.push(format!("security: {}", conn.security()));
    let version = conn.server_version().map_err(|e| e.to_string())?;
    let sys = conn.identify_system().await.map_err(|e| e.to_string())?;
    lines.push(format!(
        "server: {}, system identifier {}, timeline {}, WAL at {}",
        version, sys.system_identifier, sys.timeline, sys.xlogpos
    ));
    conn.terminate().await;
    Ok(lines)
}
