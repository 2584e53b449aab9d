//! What the infra benches share: latency percentiles of a set of samples. (A directory module,
//! so cargo does not take it for a bench of its own.)

use std::time::Duration;

#[derive(Debug, Clone, Copy)]
#[allow(dead_code, reason = "each bench prints the percentiles it reports; not all of them")]
pub struct Percentiles {
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub mean: Duration,
}

/// Nearest rank: each percentile is the smallest sample with at least p % of samples at or below it.
pub fn percentiles(mut samples: Vec<Duration>) -> Percentiles {
    assert!(!samples.is_empty(), "no samples");
    samples.sort_unstable();
    let at = |p: f64| {
        let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
        samples[rank.clamp(1, samples.len()) - 1]
    };
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    Percentiles { p50: at(50.0), p90: at(90.0), p99: at(99.0), max: samples[samples.len() - 1], mean }
}
