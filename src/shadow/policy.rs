//! A route's compiled shadow settings.

use std::sync::Arc;

use http::Method;

use super::compare::CompareRules;
use crate::routing::BackendId;

/// Default cap of the copied request and response bodies.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

#[derive(Debug)]
pub struct ShadowPolicy {
    pub backend: BackendId,
    /// Share of requests mirrored, in basis points (10,000 = all).
    pub sample_bp: u32,
    /// The route's hash salt for sampling, computed once at compile time.
    pub salt: u64,
    /// Only these are mirrored; GET, HEAD and OPTIONS unless the route lists others.
    pub methods: Box<[Method]>,
    pub max_body_bytes: usize,
    /// Send the mirror to this path instead (e.g. a dry-run endpoint).
    pub path: Option<Box<str>>,
    /// Diffy-style noise learning: a second primary answer to compare with.
    pub secondary: Option<BackendId>,
    pub rules: Arc<CompareRules>,
}

impl ShadowPolicy {
    pub fn default_methods() -> Box<[Method]> {
        Box::new([Method::GET, Method::HEAD, Method::OPTIONS])
    }
}
