//! The command line: argument definitions and the commands they run.
//!
//! `main` parses and calls `execute`; everything a command prints is here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

use crate::config::{self, CompileContext, ConfigErrors};
use crate::metrics::Metrics;
use crate::routing::{explain, RequestView, RouteChanges};
use crate::telemetry::{self, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "strangler",
    version,
    about = "Reverse proxy for the strangler-fig migration of a monolith"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the proxy and the admin API.
    Run(RunArgs),
    /// Validate a routes directory; print every problem as FILE:LINE:COL.
    Check {
        #[arg(default_value = "routes")]
        dir: PathBuf,
    },
    /// Show which route a request matches, why, and where it goes.
    Explain(ExplainArgs),
    /// The route-level change between two routes directories.
    Diff { old: PathBuf, new: PathBuf },
    /// Start a demo monolith, two new services, the proxy and steady
    /// traffic, and watch one migration complete and one roll back.
    Demo(DemoArgs),
    /// Watch and drive gated migrations through the admin API.
    Migrate(MigrateArgs),
    /// Print the JSON Schema of route files (docs/routes.schema.json).
    Schema,
    /// Print a shell completion script, e.g.
    /// `strangler completions bash > /etc/bash_completion.d/strangler`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `strangler man | man -l -`.
    Man {
        /// Write one page per command (strangler.1, strangler-run.1, ...)
        /// into this directory instead.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[arg(value_parser = ["status", "promote", "pause", "resume", "rollback"])]
    pub action: String,
    /// The route; required for every action but `status`.
    pub route: Option<String>,
    /// Base URL of the admin API.
    #[arg(
        long,
        env = "STRANGLER_ADMIN_URL",
        default_value = "http://127.0.0.1:9090"
    )]
    pub admin: String,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[arg(long, env = "STRANGLER_ROUTES", default_value = "routes")]
    pub routes: PathBuf,
    #[arg(long, env = "STRANGLER_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    #[arg(long, env = "STRANGLER_ADMIN", default_value = "127.0.0.1:9090")]
    pub admin: SocketAddr,
    /// Also serve TLS here, with the certificates of `server.tls`.
    #[arg(long = "tls-listen", env = "STRANGLER_TLS_LISTEN")]
    pub tls_listen: Option<SocketAddr>,
    #[arg(
        long = "state-dir",
        env = "STRANGLER_STATE_DIR",
        default_value = "state"
    )]
    pub state_dir: PathBuf,
    /// Worker threads, each serving the connections it accepts (0 or unset: one per core).
    #[arg(long, env = "STRANGLER_WORKERS")]
    pub workers: Option<usize>,
    #[arg(
        long = "log-format",
        env = "STRANGLER_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[arg(long, env = "STRANGLER_ROUTES", default_value = "routes")]
    pub routes: PathBuf,
    pub method: String,
    /// A full URL (`http://host/path?q`) or a path.
    pub url: String,
    /// A request header, `-H 'Name: value'`; repeatable.
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin: SocketAddr,
    /// Where the demo writes its routes and migration state; default: a
    /// fresh temporary directory, so an earlier run never interferes.
    #[arg(long = "state-dir")]
    pub state_dir: Option<PathBuf>,
    /// Stop after this long (e.g. `90s`); default: run until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<std::time::Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot bind {what} listener on {addr}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Run(#[from] crate::RunError),
    #[error("invalid {what} `{value}`")]
    BadArgument { what: &'static str, value: String },
    #[error("{0}")]
    Config(ConfigErrors),
    #[error(transparent)]
    Admin(#[from] crate::admin::client::AdminClientError),
    #[error("the demo failed")]
    Demo(#[from] crate::demo::DemoError),
    #[error("cannot write the {what}")]
    Output {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

pub fn execute(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Run(args) => run(args).map(|()| ExitCode::SUCCESS),
        Command::Check { dir } => Ok(check(&dir)),
        Command::Explain(args) => explain_request(args).map(|()| ExitCode::SUCCESS),
        Command::Diff { old, new } => diff(&old, &new).map(|()| ExitCode::SUCCESS),
        Command::Demo(args) => demo(args).map(|()| ExitCode::SUCCESS),
        Command::Migrate(args) => migrate(args).map(|()| ExitCode::SUCCESS),
        Command::Schema => schema().map(|()| ExitCode::SUCCESS),
        Command::Completions { shell } => {
            let mut stdout = std::io::stdout();
            clap_complete::generate(shell, &mut Cli::command(), "strangler", &mut stdout);
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir } => man(dir.as_deref()).map(|()| ExitCode::SUCCESS),
    }
}

fn schema() -> Result<(), CliError> {
    use std::io::Write;
    let schema = config::route_file_schema();
    let text = serde_json::to_string_pretty(&schema).expect("a JSON value always serializes");
    let written = writeln!(std::io::stdout(), "{text}");
    written.or_else(output_error("schema"))
}

fn man(dir: Option<&Path>) -> Result<(), CliError> {
    match dir {
        Some(dir) => std::fs::create_dir_all(dir)
            .and_then(|()| clap_mangen::generate_to(Cli::command(), dir))
            .or_else(output_error("man pages")),
        None => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .or_else(output_error("man page")),
    }
}

/// A write error of a printing command. A closed pipe (`strangler man | head`)
/// is the reader's choice, not a failure.
fn output_error(what: &'static str) -> impl Fn(std::io::Error) -> Result<(), CliError> {
    move |source| match source.kind() {
        std::io::ErrorKind::BrokenPipe => Ok(()),
        _ => Err(CliError::Output { what, source }),
    }
}

fn single_threaded_runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)
}

fn run(args: RunArgs) -> Result<(), CliError> {
    telemetry::init(args.log_format);
    // This thread is the first worker; `serve` starts the others, each on
    // a single-threaded runtime of its own (`server::workers`).
    let runtime = crate::worker::runtime().map_err(CliError::Runtime)?;
    let _batching = crate::telemetry::access::batch_on_this_thread();
    let workers = match args.workers {
        Some(0) | None => crate::worker::default_count(),
        Some(workers) => workers,
    };
    runtime.block_on(async {
        let listener = crate::server::bind(args.listen, workers)
            .await
            .map_err(|source| CliError::Bind {
                what: "proxy",
                addr: args.listen,
                source,
            })?;
        let admin = tokio::net::TcpListener::bind(args.admin)
            .await
            .map_err(|source| CliError::Bind {
                what: "admin",
                addr: args.admin,
                source,
            })?;
        let tls =
            match args.tls_listen {
                Some(addr) => Some(crate::server::bind(addr, workers).await.map_err(|source| {
                    CliError::Bind {
                        what: "TLS",
                        addr,
                        source,
                    }
                })?),
                None => None,
            };
        let config = crate::RunConfig {
            routes_dir: args.routes,
            state_dir: args.state_dir,
            watch: true,
            workers,
        };
        let listeners = crate::Listeners {
            proxy: listener,
            tls,
            admin,
        };
        crate::serve(listeners, config, shutdown_signal()).await?;
        Ok(())
    })
}

fn migrate(args: MigrateArgs) -> Result<(), CliError> {
    use crate::admin::client::{call, migrations_table};
    let runtime = single_threaded_runtime()?;
    let answer = runtime.block_on(async {
        match (args.action.as_str(), &args.route) {
            ("status", None) => call(&args.admin, Method::GET, "/api/migrations").await,
            ("status", Some(route)) => {
                let all = call(&args.admin, Method::GET, "/api/migrations").await?;
                let one: Vec<serde_json::Value> = all
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|v| v["route"] == route.as_str())
                    .cloned()
                    .collect();
                Ok(serde_json::Value::Array(one))
            }
            (action, Some(route)) => {
                call(
                    &args.admin,
                    Method::POST,
                    &format!("/api/migrations/{route}/{action}"),
                )
                .await
            }
            (_, None) => Err(crate::admin::client::AdminClientError::Url(format!(
                "`{}` needs a ROUTE",
                args.action
            ))),
        }
    })?;
    print!("{}", migrations_table(&answer));
    Ok(())
}

fn demo(args: DemoArgs) -> Result<(), CliError> {
    // Warnings only: the access log at 100 requests a second would bury
    // the table, and the table already reports every gate decision.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,strangler::gate=error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    // The demo's backends and traffic share the runtime with the proxy.
    let runtime = tokio::runtime::Runtime::new().map_err(CliError::Runtime)?;
    let report = runtime.block_on(crate::demo::demo(
        args.listen,
        args.admin,
        args.state_dir,
        args.duration,
    ))?;
    println!("\n{report}");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

/// Loads and compiles a directory without serving it.
fn compile_dir(dir: &Path, metrics: &Metrics) -> Result<config::Compiled, ConfigErrors> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    // Upstream clients need a runtime context to be built, not to run.
    let _guard = runtime.as_ref().ok().map(|r| r.enter());
    config::load(
        dir,
        &CompileContext {
            metrics,
            previous: None,
            migrations: None,
        },
    )
}

fn check(dir: &Path) -> ExitCode {
    match compile_dir(dir, &Metrics::new()) {
        Ok(compiled) => {
            for warning in &compiled.warnings {
                println!("{warning}");
            }
            let snapshot = &compiled.snapshot;
            println!(
                "{}: valid ({} routes, {} backends, version {})",
                dir.display(),
                snapshot.routes.len(),
                snapshot.backends.len(),
                snapshot.version
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for error in &errors.0 {
                println!("{error}");
            }
            ExitCode::FAILURE
        }
    }
}

fn explain_request(args: ExplainArgs) -> Result<(), CliError> {
    let compiled = compile_dir(&args.routes, &Metrics::new()).map_err(CliError::Config)?;
    let method = Method::from_bytes(args.method.to_ascii_uppercase().as_bytes()).map_err(|_| {
        CliError::BadArgument {
            what: "method",
            value: args.method.clone(),
        }
    })?;
    let uri: Uri = args.url.parse().map_err(|_| CliError::BadArgument {
        what: "URL",
        value: args.url.clone(),
    })?;
    let mut headers = HeaderMap::new();
    for header in &args.headers {
        let bad = || CliError::BadArgument {
            what: "header",
            value: header.clone(),
        };
        let (name, value) = header.split_once(':').ok_or_else(bad)?;
        let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| bad())?;
        let value = HeaderValue::from_str(value.trim()).map_err(|_| bad())?;
        headers.append(name, value);
    }
    let path = crate::proxy::path::normalize(uri.path()).map_err(|err| CliError::BadArgument {
        what: "path",
        value: format!("{} ({err})", uri.path()),
    })?;
    let host = uri.host().map(str::to_string).or_else(|| {
        headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| h.split(':').next().unwrap_or(h).to_string())
    });
    let request = RequestView {
        method: &method,
        path: &path,
        query: uri.query(),
        host: host.as_deref(),
        headers: &headers,
        client_ip: std::net::Ipv4Addr::LOCALHOST.into(),
    };
    println!("{method} {uri}");
    print!("{}", explain(&compiled.snapshot, &request));
    Ok(())
}

fn diff(old: &Path, new: &Path) -> Result<(), CliError> {
    let metrics = Metrics::new();
    let before = compile_dir(old, &metrics).map_err(CliError::Config)?;
    let after = compile_dir(new, &metrics).map_err(CliError::Config)?;
    let changes = RouteChanges::between(&before.snapshot, &after.snapshot);
    println!(
        "{} -> {}: {changes}",
        before.snapshot.version, after.snapshot.version
    );
    for line in &changes.traffic {
        println!("traffic  {line}");
    }
    Ok(())
}
