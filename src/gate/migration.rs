//! One route's migration: its stages, where it stands, and the evidence
//! gathered for the gate.
//!
//! The `MigrationCell` is what requests read (an atomic weight); the rest
//! sits behind a std Mutex taken for a few instructions per request on
//! migrating routes, and by the gate once per interval (`tick`, which
//! never holds it across I/O).

mod tick;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::business::BusinessCheck;
use super::{Evidence, GateRules, GateState, MatchWindow, SideWindow};

pub use self::tick::Judgement;

/// How many decisions `GET /api/migrations` shows per route.
const HISTORY: usize = 20;

/// A stage: mirror only, or a share of traffic (basis points) to the new service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Shadow,
    Share(u32),
}

impl Stage {
    pub fn weight_bp(self) -> u32 {
        match self {
            Stage::Shadow => 0,
            Stage::Share(bp) => bp,
        }
    }

    pub fn label(self) -> String {
        match self {
            Stage::Shadow => "shadow".into(),
            Stage::Share(bp) => format!("{}%", f64::from(bp) / 100.0),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Running,
    Paused,
    /// The gate (or a person) rolled back: 0% until someone resumes.
    RolledBack,
    /// At 100%: the gate has nothing left to do.
    Completed,
}

/// The settings of a migration, from the route file.
#[derive(Debug, Clone, PartialEq)]
pub struct MigrationPlan {
    pub from: String,
    pub to: String,
    pub stages: Vec<Stage>,
    pub rules: GateRules,
    pub window: Duration,
    pub interval: Duration,
    /// Statuses that count as failures besides 5xx (e.g. 402 on payments).
    pub failure_statuses: Vec<u16>,
    pub webhook: Option<String>,
    /// Where the built-in checks read their evidence.
    pub source: EvidenceSource,
    /// PromQL checks judged beside the built-in ones, in every stage.
    pub business_checks: Vec<BusinessCheck>,
    /// The server of the business checks and of fleet mode; set whenever
    /// either is used (`config::compile` makes sure).
    pub prometheus_url: Option<String>,
}

/// `gate.source`: where the built-in checks get their numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EvidenceSource {
    /// This replica's own windows: exact, with latency samples, but only
    /// the traffic this replica served.
    #[default]
    Local,
    /// Fleet mode: PromQL over every replica's metrics (`gate::fleet`),
    /// and the stage kept in step with the other replicas.
    Prometheus,
}

/// What a request reads: lock-free.
#[derive(Debug, Default)]
pub struct MigrationCell {
    weight_bp: AtomicU32,
    is_shadow: AtomicBool,
}

impl MigrationCell {
    pub fn weight_bp(&self) -> u32 {
        self.weight_bp.load(Ordering::Relaxed)
    }

    pub fn is_shadow_stage(&self) -> bool {
        self.is_shadow.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub at_unix: u64,
    pub stage: String,
    pub verdict: &'static str,
    pub by: &'static str,
    pub evidence: Option<Evidence>,
}

/// Which side of the comparison a request belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Old,
    New,
}

impl std::fmt::Debug for Migration {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "Migration({})", self.route)
    }
}

pub struct Migration {
    pub route: String,
    pub cell: Arc<MigrationCell>,
    state: Mutex<Runtime>,
}

struct Runtime {
    plan: MigrationPlan,
    stage: usize,
    status: Status,
    old: SideWindow,
    new: SideWindow,
    matches: MatchWindow,
    gate: GateState,
    last_check: Instant,
    /// When this replica entered the stage: fleet mode reads evidence
    /// from here on, up to the window.
    stage_started: Instant,
    /// Fleet mode: a person resumed this replica after a rollback, so the
    /// other replicas' rolled-back stage is not followed until none
    /// reports one (they were resumed too).
    ignores_fleet_rollback: bool,
    last: Option<Evidence>,
    history: VecDeque<Decision>,
}

/// What `GET /api/migrations` shows of one migration, and what is persisted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MigrationView {
    pub route: String,
    pub from: String,
    pub to: String,
    pub stage: String,
    pub stage_index: usize,
    pub stages: Vec<String>,
    pub weight: f64,
    pub status: Status,
    #[serde(default, skip_deserializing)]
    pub last_evidence: Option<Evidence>,
    #[serde(default, skip_deserializing)]
    pub history: Vec<Decision>,
}

fn windows(plan: &MigrationPlan, now: Instant) -> (SideWindow, SideWindow, MatchWindow) {
    // The window was validated at compile time; fall back to a minute so
    // that a bad value can never panic here.
    let window = plan.window.max(Duration::from_millis(100));
    let side = |seed| {
        SideWindow::new(window, now, seed)
            .or_else(|_| SideWindow::new(Duration::from_secs(60), now, seed))
    };
    let (Ok(old), Ok(new)) = (side(1), side(2)) else {
        unreachable_windows()
    };
    let matches =
        MatchWindow::new(window, now).or_else(|_| MatchWindow::new(Duration::from_secs(60), now));
    let Ok(matches) = matches else {
        unreachable_windows()
    };
    (old, new, matches)
}

fn unreachable_windows() -> ! {
    panic!("a 60 s window is always valid")
}

impl Migration {
    /// A migration at `stage` (an index into `plan.stages`) with `status`.
    pub fn new(route: String, plan: MigrationPlan, stage: usize, status: Status) -> Migration {
        let now = Instant::now();
        let (old, new, matches) = windows(&plan, now);
        let migration = Migration {
            route,
            cell: Arc::new(MigrationCell::default()),
            state: Mutex::new(Runtime {
                stage: stage.min(plan.stages.len().saturating_sub(1)),
                plan,
                status,
                old,
                new,
                matches,
                gate: GateState::new(),
                last_check: now,
                stage_started: now,
                ignores_fleet_rollback: false,
                last: None,
                history: VecDeque::new(),
            }),
        };
        if let Ok(runtime) = migration.state.lock() {
            migration.publish(&runtime);
        }
        migration
    }

    fn publish(&self, runtime: &Runtime) {
        let stage = runtime
            .plan
            .stages
            .get(runtime.stage)
            .copied()
            .unwrap_or(Stage::Shadow);
        let (weight, shadow) = match runtime.status {
            Status::RolledBack => (0, false),
            _ => (stage.weight_bp(), stage == Stage::Shadow),
        };
        self.cell.weight_bp.store(weight, Ordering::Relaxed);
        self.cell.is_shadow.store(shadow, Ordering::Relaxed);
    }

    pub fn plan(&self) -> Option<MigrationPlan> {
        self.state.lock().ok().map(|r| r.plan.clone())
    }

    /// Applies an edited plan: the stage with the same value is kept, else
    /// the highest stage not above the current weight.
    pub fn replan(&self, plan: MigrationPlan) {
        let Ok(mut runtime) = self.state.lock() else {
            return;
        };
        if runtime.plan == plan {
            return;
        }
        let current = runtime
            .plan
            .stages
            .get(runtime.stage)
            .copied()
            .unwrap_or(Stage::Shadow);
        runtime.stage = plan
            .stages
            .iter()
            .position(|s| *s == current)
            .or_else(|| {
                plan.stages
                    .iter()
                    .rposition(|s| s.weight_bp() <= current.weight_bp())
            })
            .unwrap_or(0);
        runtime.plan = plan;
        reset_evidence(&mut runtime, Instant::now());
        self.publish(&runtime);
    }

    pub fn is_failure(&self, status: u16) -> bool {
        status >= 500
            || self
                .state
                .lock()
                .map(|r| r.plan.failure_statuses.contains(&status))
                .unwrap_or(false)
    }

    pub fn record(&self, side: Side, is_failure: bool, latency: Duration) {
        if let Ok(mut runtime) = self.state.lock() {
            let now = Instant::now();
            match side {
                Side::Old => runtime.old.record(now, is_failure, latency),
                Side::New => runtime.new.record(now, is_failure, latency),
            }
        }
    }

    pub fn record_match(&self, is_match: bool) {
        if let Ok(mut runtime) = self.state.lock() {
            runtime.matches.record(Instant::now(), is_match);
        }
    }

    fn advance(&self, runtime: &mut Runtime, now: Instant) {
        let next = (runtime.stage + 1).min(runtime.plan.stages.len().saturating_sub(1));
        enter_stage(runtime, next, now);
    }

    /// A person's command: promote, pause, resume or rollback.
    pub fn command(&self, action: &str, unix: u64) -> Result<MigrationView, String> {
        let mut runtime = self
            .state
            .lock()
            .map_err(|_| "migration state poisoned".to_string())?;
        let stage = runtime
            .plan
            .stages
            .get(runtime.stage)
            .copied()
            .unwrap_or(Stage::Shadow);
        match action {
            "promote" => {
                if runtime.status == Status::RolledBack {
                    runtime.status = Status::Running;
                    runtime.ignores_fleet_rollback = true;
                }
                self.advance(&mut runtime, Instant::now());
            }
            "pause" => runtime.status = Status::Paused,
            "resume" => {
                // A rolled-back migration resumes at the stage it failed in.
                if runtime.status == Status::RolledBack {
                    runtime.ignores_fleet_rollback = true;
                }
                runtime.status = Status::Running;
                reset_evidence(&mut runtime, Instant::now());
            }
            "rollback" => runtime.status = Status::RolledBack,
            other => {
                return Err(format!(
                    "unknown action `{other}` (promote, pause, resume, rollback)"
                ))
            }
        }
        let verdict = match action {
            "promote" => "promote",
            "rollback" => "rollback",
            _ => "hold",
        };
        push_history(&mut runtime, unix, stage, verdict, "operator", None);
        self.publish(&runtime);
        Ok(self.view_of(&runtime))
    }

    pub fn view(&self) -> Option<MigrationView> {
        self.state.lock().ok().map(|r| self.view_of(&r))
    }

    fn view_of(&self, runtime: &Runtime) -> MigrationView {
        let stage = runtime
            .plan
            .stages
            .get(runtime.stage)
            .copied()
            .unwrap_or(Stage::Shadow);
        MigrationView {
            route: self.route.clone(),
            from: runtime.plan.from.clone(),
            to: runtime.plan.to.clone(),
            stage: stage.label(),
            stage_index: runtime.stage,
            stages: runtime.plan.stages.iter().map(|s| s.label()).collect(),
            weight: f64::from(self.cell.weight_bp()) / 10_000.0,
            status: runtime.status,
            last_evidence: runtime.last.clone(),
            history: runtime.history.iter().cloned().collect(),
        }
    }
}

/// Moves to stage `index` (completed at 100%) with fresh evidence.
fn enter_stage(runtime: &mut Runtime, index: usize, now: Instant) {
    runtime.stage = index;
    if runtime
        .plan
        .stages
        .get(runtime.stage)
        .is_some_and(|s| s.weight_bp() >= 10_000)
    {
        runtime.status = Status::Completed;
    }
    reset_evidence(runtime, now);
}

/// Evidence from one stage says little about the next: new windows, a new
/// run of passes, and fleet mode reads from `now` on.
fn reset_evidence(runtime: &mut Runtime, now: Instant) {
    (runtime.old, runtime.new, runtime.matches) = windows(&runtime.plan, now);
    runtime.gate = GateState::new();
    runtime.stage_started = now;
}

fn push_history(
    runtime: &mut Runtime,
    unix: u64,
    stage: Stage,
    verdict: &'static str,
    by: &'static str,
    evidence: Option<Evidence>,
) {
    if runtime.history.len() == HISTORY {
        runtime.history.pop_front();
    }
    runtime.history.push_back(Decision {
        at_unix: unix,
        stage: stage.label(),
        verdict,
        by,
        evidence,
    });
}
