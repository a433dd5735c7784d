//! One module per subcommand of `redo-helper`: its arguments (clap), the orchestration of
//! the library's parts, and all of its printing. `main.rs` only dispatches here; nothing
//! below this layer prints (they return summaries and report progress by callback).

pub mod check;
pub mod config;
pub mod probe;
pub mod repair;
pub mod run;
pub mod systemd;
pub mod verify;
pub mod waldump;
