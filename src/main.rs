//! `switchboard` command line: parse, load and validate settings, set up logs, then hand over to
//! the library.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use switchboard::config::Config;
use switchboard::{cli, telemetry};

/// jemalloc instead of the system allocator: the hot path allocates and frees small objects on
/// many threads, where it costs far less CPU (measured: ~40 % more committed messages per second
/// in the closed-loop bench) at the same memory per idle connection.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Starts jemalloc's background threads, which hand freed memory back to the system after its
/// decay time even when the server is idle; without them, memory is only returned when
/// allocations happen, so a load that goes away leaves the process at its peak. Measured with
/// three rounds of 10 000 idle sockets opened and closed: 20 s after the last close RSS is
/// 52–60 MiB with them against ~140 MiB without (246 MiB at the peak, 24 MiB at start).
///
/// The decay time is 1 s instead of jemalloc's 10 s ([`DIRTY_DECAY_MS`]): under a steady load of
/// 10 560 messages/s to groups of 10 (1 000 sockets), RSS then stays at 79–87 MiB where it swung
/// between 95 and 126 MiB, at the same latency. `_RJEM_MALLOC_CONF` (jemalloc's own setting)
/// overrides it.
fn return_memory_when_idle() {
    #[cfg(feature = "jemalloc")]
    {
        if std::env::var_os("_RJEM_MALLOC_CONF").is_none() {
            use tikv_jemalloc_ctl::{Access, AsName};
            // Arenas made from now on, then those that exist (one not yet in use refuses: it
            // takes the new default when it starts).
            if let Err(e) = b"arenas.dirty_decay_ms\0".name().write(DIRTY_DECAY_MS) {
                tracing::warn!(error = %e, "could not set the allocator's decay time");
            }
            let arenas = tikv_jemalloc_ctl::arenas::narenas::read().unwrap_or(0);
            if let Ok(mut arena) = b"arena.0.dirty_decay_ms\0".name().mib::<[usize; 3]>() {
                for i in 0..arenas {
                    arena[1] = i as usize;
                    let _ = arena.write(DIRTY_DECAY_MS);
                }
            }
        }
        if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
            tracing::warn!(error = %e, "could not start the allocator's background threads");
        }
        switchboard::metrics::set_allocator_probe(jemalloc_stats);
    }
}

/// jemalloc's figures for `/metrics` (`switchboard_allocator_*`): its statistics are refreshed
/// (`epoch`) and read at each scrape.
#[cfg(feature = "jemalloc")]
fn jemalloc_stats() -> Option<switchboard::metrics::AllocatorStats> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().ok()?;
    let read = |v: Result<usize, tikv_jemalloc_ctl::Error>| v.ok().map(|n| n as u64);
    Some(switchboard::metrics::AllocatorStats {
        allocated: read(stats::allocated::read())?,
        active: read(stats::active::read())?,
        resident: read(stats::resident::read())?,
        retained: read(stats::retained::read())?,
    })
}

/// How long jemalloc keeps freed pages before handing them back to the system, ms.
#[cfg(feature = "jemalloc")]
const DIRTY_DECAY_MS: isize = 1000;

/// Chat and WebRTC call signaling server.
///
/// Settings come from environment variables (see .env.example) and, optionally, a TOML file
/// whose keys are the variable names in lower case; the environment wins.
#[derive(Debug, Parser)]
#[command(name = "switchboard", version, about, long_about)]
struct Cli {
    /// TOML settings file (also `SWITCHBOARD_CONFIG`).
    #[arg(long, global = true, env = "SWITCHBOARD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run pending migrations, then serve HTTP, WebSockets and Socket.IO on BIND.
    Serve,
    /// Run pending database migrations and exit.
    Migrate,
    /// Manage user accounts.
    #[command(subcommand)]
    User(UserCommand),
    /// Print a signed access token for a user (operations and testing).
    Token {
        /// User id.
        #[arg(long = "user", value_name = "ID")]
        user: i64,
        /// Lifetime in seconds (default: ACCESS_TOKEN_TTL_SECS).
        #[arg(long, value_name = "SECS")]
        ttl: Option<u64>,
    },
    /// Import a legacy backend's data from its `mongoexport` files (`DIR/<collection>.json`):
    /// idempotent and resumable; prints a summary as JSON on stdout and every document it could
    /// not import (or imported after a repair) on stderr.
    Import {
        /// Which backend wrote the export.
        #[arg(long, value_enum)]
        from: switchboard::import::Source,
        /// Directory of the export.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The old backend's upload directory: media of imported messages found there become
        /// Switchboard uploads (not with --dry-run).
        #[arg(long, value_name = "DIR")]
        media_dir: Option<PathBuf>,
        /// Do everything, report it, and roll it back.
        #[arg(long)]
        dry_run: bool,
    },
    /// Serve what the official protocol test suites expect, through the production transport:
    /// `engineio` (a bare Engine.IO echo server at /engine.io/) or `socketio` (echo namespaces
    /// `/` and `/custom` at /socket.io/).
    Conformance {
        /// Which suite: `engineio` or `socketio`.
        #[arg(value_parser = ["engineio", "socketio"])]
        suite: String,
        /// Listen address (the suites use localhost:3000).
        #[arg(long, default_value = "127.0.0.1:3000")]
        bind: String,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create a user and print it as JSON.
    Add(UserAdd),
    /// Create an `admin` user with a random password unless an admin exists; prints the
    /// credentials once, as JSON, when it creates one.
    EnsureAdmin {
        /// E-mail address of the admin to create.
        #[arg(long, default_value = "admin@localhost.localdomain")]
        email: String,
        /// Display name.
        #[arg(long, default_value = "Administrator")]
        name: String,
    },
}

#[derive(Debug, Args)]
#[group(id = "contact", required = true, multiple = true, args = ["phone", "email"])]
struct UserAdd {
    /// Display name.
    #[arg(long)]
    name: String,
    /// Phone number in international format (+...).
    #[arg(long)]
    phone: Option<String>,
    /// E-mail address.
    #[arg(long)]
    email: Option<String>,
    /// Password (omit for an OTP-only account).
    #[arg(long)]
    password: Option<String>,
    /// Role to grant; repeat for several (`admin` and `master` may moderate).
    #[arg(long = "role", value_name = "ROLE")]
    roles: Vec<String>,
}

fn main() -> ExitCode {
    // An empty SWITCHBOARD_CONFIG (as in a systemd EnvironmentFile template) means "no file".
    if std::env::var_os("SWITCHBOARD_CONFIG").is_some_and(|v| v.is_empty()) {
        std::env::remove_var("SWITCHBOARD_CONFIG");
    }
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => return fail(&e.to_string()),
    };
    telemetry::init(config.log_format, "info");
    let result = match cli.command {
        Command::Serve => config.validate().map_err(|e| e.to_string()).and_then(|()| {
            return_memory_when_idle();
            actix_web::rt::System::new()
                .block_on(switchboard::server::serve(config))
                .map_err(|e| format!("{e}: {}", cause(&e)))
        }),
        Command::Migrate => cli::migrate(&config),
        Command::User(UserCommand::Add(a)) => cli::user_add(
            &config,
            &a.name,
            a.phone.as_deref(),
            a.email.as_deref(),
            a.password.as_deref(),
            a.roles,
        ),
        Command::User(UserCommand::EnsureAdmin { email, name }) => {
            cli::ensure_admin(&config, &name, &email)
        }
        Command::Token { user, ttl } => cli::token(&config, user, ttl),
        Command::Import {
            from,
            dir,
            media_dir,
            dry_run,
        } => cli::import(&config, from, dir, media_dir, dry_run),
        Command::Conformance { suite, bind } => actix_web::rt::System::new()
            .block_on(async {
                use switchboard::realtime::socketio::conformance;
                if suite == "socketio" {
                    conformance::serve_socketio(&bind).await
                } else {
                    conformance::serve_engineio(&bind).await
                }
            })
            .map_err(|e| format!("conformance server: {e}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(&message),
    }
}

fn cause(e: &switchboard::error::AppError) -> String {
    match e {
        switchboard::error::AppError::Internal { cause }
        | switchboard::error::AppError::Unavailable { cause } => cause.clone(),
        other => other.to_string(),
    }
}

#[allow(clippy::print_stderr)]
fn fail(message: &str) -> ExitCode {
    eprintln!("switchboard: {message}");
    ExitCode::from(2)
}
