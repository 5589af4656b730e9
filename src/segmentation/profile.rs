//! Summaries of ONNX Runtime's profiler output: time per operator type.
//!
//! With profiling on, a session writes a JSON array of trace events (the Chrome trace format).
//! Each operator run is a `"cat": "Node"` event named `<node>_kernel_time`, with its duration in
//! microseconds and its operator type in `args.op_name`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Total kernel time of one operator type.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OperatorTime {
    pub operator: String,
    pub seconds: f64,
    /// Share of all kernel time in the profile.
    pub share: f64,
    pub calls: u64,
}

#[derive(Deserialize)]
struct Event {
    #[serde(default)]
    cat: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    dur: u64,
    #[serde(default)]
    args: EventArgs,
}

#[derive(Default, Deserialize)]
struct EventArgs {
    #[serde(default)]
    op_name: Option<String>,
}

/// Reads a profile file and returns the kernel time per operator type, largest first.
pub fn summarize_file(path: &Path) -> anyhow::Result<Vec<OperatorTime>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read the profile {}: {e}", path.display()))?;
    summarize(&text).map_err(|e| anyhow::anyhow!("invalid profile {}: {e}", path.display()))
}

/// Sums the kernel time per operator type of a profile's JSON text, largest first.
pub fn summarize(json: &str) -> Result<Vec<OperatorTime>, serde_json::Error> {
    let events: Vec<Event> = serde_json::from_str(json)?;
    let mut totals: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for event in events {
        let Some(operator) = event.args.op_name else {
            continue;
        };
        if event.cat != "Node" || !event.name.ends_with("_kernel_time") {
            continue;
        }
        let total = totals.entry(operator).or_default();
        total.0 += event.dur;
        total.1 += 1;
    }

    let all: u64 = totals.values().map(|(micros, _)| micros).sum();
    let mut times: Vec<OperatorTime> = totals
        .into_iter()
        .map(|(operator, (micros, calls))| OperatorTime {
            operator,
            seconds: micros as f64 / 1e6,
            share: if all == 0 { 0.0 } else { micros as f64 / all as f64 },
            calls,
        })
        .collect();
    times.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    Ok(times)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_times_are_summed_per_operator() {
        let json = r#"[
            {"cat": "Session", "name": "model_run", "dur": 900},
            {"cat": "Node", "name": "conv1_fence_before", "dur": 0, "args": {"op_name": "Conv"}},
            {"cat": "Node", "name": "conv1_kernel_time", "dur": 300, "args": {"op_name": "Conv"}},
            {"cat": "Node", "name": "conv2_kernel_time", "dur": 500, "args": {"op_name": "Conv"}},
            {"cat": "Node", "name": "add_kernel_time", "dur": 200, "args": {"op_name": "Add"}}
        ]"#;

        let times = summarize(json).unwrap();

        assert_eq!(times.len(), 2);
        assert_eq!(times[0].operator, "Conv");
        assert_eq!(times[0].calls, 2);
        assert!((times[0].seconds - 0.0008).abs() < 1e-12);
        assert!((times[0].share - 0.8).abs() < 1e-12);
        assert_eq!(times[1].operator, "Add");
    }

    #[test]
    fn profile_that_is_not_an_array_is_rejected() {
        assert!(summarize(r#"{"traceEvents": []}"#).is_err());
    }
}
