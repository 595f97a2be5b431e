//! Migration gates: judge a route's new service against the monolith, window by window.
//!
//! The proxy records each finished request into the route's two
//! `SideWindow`s (and shadow comparisons into a `MatchWindow`). Every
//! `interval` the gate snapshots them, calls `evaluate`, and feeds the
//! result to the route's `GateState`, which says promote, hold or rollback.
//! Business checks (`business`) and fleet mode (`fleet`, the same checks
//! over every replica's metrics) add numbers read from Prometheus
//! (`prometheus`); the controller fetches them before it takes a
//! migration's lock (`external`). Only `controller` and `prometheus` do
//! I/O; elsewhere time comes in as arguments.

mod business;
mod checks;
mod controller;
mod external;
pub mod failure;
pub mod fleet;
pub mod migration;
pub mod prometheus;
pub mod stats;
pub mod verdict;
pub mod window;

pub use self::business::BusinessCheck;
pub use self::controller::{MigrationError, Migrations};
pub use self::external::{External, FleetEvidence, GateQuery};
pub use self::migration::{
    EvidenceSource, Judgement, Migration, MigrationCell, MigrationPlan, MigrationView, Side, Stage,
    Status,
};
pub use self::verdict::{
    evaluate, Check, CheckName, CheckOutcome, Evidence, GateRules, GateRulesError, GateState,
    LatencyTest, StageKind, Verdict,
};
pub use self::window::{MatchEvidence, MatchWindow, SideEvidence, SideWindow, WindowError};

#[cfg(test)]
mod tests;
