//! Shadow traffic: mirror a request to a candidate, off the client's path,
//! and compare its answer with the primary's.
//!
//! `mirror` queues and runs the jobs, `tee` keeps bounded copies of the
//! bodies as they stream, `compare` tells real differences from noise,
//! `store` keeps recent mismatches for the admin API, `priority` puts
//! the shadow thread behind the client path, and `stall` tells when that
//! thread was kept off the CPU.

pub mod compare;
pub mod decode;
pub mod fieldpath;
pub mod mirror;
pub mod policy;
mod priority;
mod stall;
pub mod store;
pub mod tee;

pub use self::mirror::{Mirror, Outcome, OutcomeHook, PrimaryAnswer, RequestBody, ShadowJob};
pub use self::policy::ShadowPolicy;
pub use self::tee::{Copied, TeeBody};
