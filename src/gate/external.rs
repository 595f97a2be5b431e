//! Evidence from outside the proxy: business checks and fleet readings,
//! fetched from Prometheus between two looks at a migration.
//!
//! `Migration::due` says what to fetch (`GateQuery`) without holding its
//! lock across I/O; `GateQuery::fetch` asks Prometheus, every query at
//! once; `Migration::tick_with` judges the result (`External`) under the
//! lock.

use tokio::task::JoinSet;

use super::business::{chain, BusinessCheck};
use super::fleet::{FleetQuery, FleetReadings};
use super::prometheus::{PrometheusApi, PrometheusError};
use super::verdict::{Check, CheckName, CheckOutcome, StageKind};

/// What one migration's next judgement needs from Prometheus.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GateQuery {
    pub prometheus_url: Option<String>,
    pub checks: Vec<BusinessCheck>,
    /// Set in fleet mode.
    pub fleet: Option<FleetQuery>,
}

/// What Prometheus said, ready for `Migration::tick_with`.
#[derive(Debug, Default)]
pub struct External {
    /// The business checks, judged.
    pub checks: Vec<Check>,
    /// Fleet mode's readings, for the stage kind they were read for.
    pub fleet: Option<FleetEvidence>,
}

#[derive(Debug)]
pub struct FleetEvidence {
    pub kind: StageKind,
    pub readings: Result<FleetReadings, PrometheusError>,
}

// === impl GateQuery ===

impl GateQuery {
    /// Nothing to fetch: the local windows decide alone.
    pub fn is_local(&self) -> bool {
        self.checks.is_empty() && self.fleet.is_none()
    }

    /// Asks every query at once; each waits at most `QUERY_TIMEOUT`.
    pub async fn fetch(self, api: &PrometheusApi) -> External {
        let Some(url) = self.prometheus_url else {
            // `config::compile` refuses checks or fleet mode without a URL.
            let missing = || PrometheusError::BadUrl { url: String::new() };
            return External {
                checks: self
                    .checks
                    .iter()
                    .map(|c| c.judge(Err(missing())))
                    .collect(),
                fleet: self.fleet.map(|f| FleetEvidence {
                    kind: f.kind,
                    readings: Err(missing()),
                }),
            };
        };
        let mut business = JoinSet::new();
        for (index, check) in self.checks.iter().enumerate() {
            let (api, url, query) = (api.clone(), url.clone(), check.query.clone());
            business.spawn(async move { (index, api.query(&url, &query).await) });
        }
        let mut fleet = JoinSet::new();
        if let Some(query) = &self.fleet {
            for (reading, promql) in query.promql() {
                let (api, url) = (api.clone(), url.clone());
                fleet.spawn(async move { (reading, api.query(&url, &promql).await) });
            }
        }

        let mut answers: Vec<Option<Result<Option<f64>, PrometheusError>>> =
            self.checks.iter().map(|_| None).collect();
        while let Some(joined) = business.join_next().await {
            if let Ok((index, answer)) = joined {
                if let Some(slot) = answers.get_mut(index) {
                    *slot = Some(answer);
                }
            }
        }
        let checks = self
            .checks
            .iter()
            .zip(answers)
            .map(|(check, answer)| match answer {
                Some(answer) => check.judge(answer),
                // The task panicked or was cancelled: no number, no pass.
                None => check.judge(Ok(None)),
            })
            .collect();

        let fleet = match self.fleet {
            None => None,
            Some(query) => {
                let mut readings = Ok(FleetReadings::default());
                while let Some(joined) = fleet.join_next().await {
                    let Ok((reading, answer)) = joined else {
                        continue;
                    };
                    match (&mut readings, answer) {
                        (Ok(all), Ok(value)) => all.set(reading, value),
                        // One unreadable number makes the whole read
                        // unusable: half the evidence is not evidence.
                        (Ok(_), Err(err)) => readings = Err(err),
                        (Err(_), _) => {}
                    }
                }
                Some(FleetEvidence {
                    kind: query.kind,
                    readings,
                })
            }
        };
        External { checks, fleet }
    }
}

/// The check that stands in for the built-in ones when fleet mode could
/// not read them: inconclusive, so the gate holds.
pub(super) fn unreadable_fleet(err: &PrometheusError) -> Check {
    Check {
        name: CheckName::FleetQuery,
        outcome: CheckOutcome::Inconclusive,
        observed: f64::NAN,
        threshold: f64::NAN,
        detail: format!("cannot read the fleet's evidence: {}", chain(err)),
    }
}
