//! Migration gates: judge a route's new service against the monolith, window by window.
//!
//! The proxy records each finished request into the route's two
//! `SideWindow`s (and shadow comparisons into a `MatchWindow`). Every
//! `interval` the gate snapshots them, calls `evaluate`, and feeds the
//! result to the route's `GateState`, which says promote, hold or rollback.
//! Nothing here does I/O or reads a clock: time comes in as arguments.

mod checks;
mod controller;
pub mod migration;
pub mod stats;
pub mod verdict;
pub mod window;

pub use self::controller::{MigrationError, Migrations};
pub use self::migration::{
    Migration, MigrationCell, MigrationPlan, MigrationView, Side, Stage, Status,
};
pub use self::verdict::{
    evaluate, Check, CheckName, CheckOutcome, Evidence, GateRules, GateRulesError, GateState,
    StageKind, Verdict,
};
pub use self::window::{MatchEvidence, MatchWindow, SideEvidence, SideWindow, WindowError};

#[cfg(test)]
mod tests;
