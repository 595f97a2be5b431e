//! `strangler`: a reverse proxy for the strangler-fig migration of a monolith.
//!
//! # Layout
//! - `config`: route files: schema (and its JSON Schema, for editors), loading,
//!   validation, compilation to a snapshot.
//! - `routing`: the compiled route table: matching, weighted and sticky choice.
//! - `proxy`: the hyper service: forward a request, header hygiene, errors,
//!   W3C trace context, `Server-Timing`.
//! - `shadow`: mirroring to a candidate and comparing its answers (JSON-aware).
//! - `gate`: migration verdicts from sliding windows of evidence and statistical tests.
//! - `upstream`: backends: a keep-alive connection pool each, timeouts, error kinds.
//! - `admin`: the admin HTTP API and `/metrics`.
//! - `metrics`: every Prometheus family, defined in one place.
//! - `reload`: load routes/, swap the snapshot, keep the old one on error.
//! - `server`: listeners, connections, graceful shutdown.
//! - `telemetry`: logging, the access log, and OTLP export of the proxy's server spans.
//! - `tls`: TLS termination: certificates by SNI, reloaded when their files change.
//! - `worker`: which worker thread this is, for state kept per worker.
//! - `cli`: the command line, for `main`.
//! - `demo`: `strangler demo`: demo backends, routes and traffic around the proxy.
#![forbid(unsafe_code)]

pub mod admin;
pub mod body;
pub mod cli;
pub mod config;
pub mod demo;
pub mod gate;
pub mod hash;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod routing;
pub mod server;
pub mod shadow;
mod small_writes;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod worker;

pub use server::{run, serve, Listeners, RunConfig, RunError};
