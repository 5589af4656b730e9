//! Every Prometheus metric of the worker, defined in one place with help text and units.
//!
//! Label values come from closed sets ([`Outcome`], [`crate::error::ErrorKind`], stage and
//! branch names), so the number of series is fixed. Every job-outcome series exists at zero
//! from the start, so that rates and alerts work before the first job.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::error::ErrorKind;

/// Histogram buckets for durations, from 50 ms to 30 minutes, in seconds.
const DURATION_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 1800.0,
];

/// Histogram buckets for single stages, from 1 ms to 30 minutes, in seconds: decoding,
/// encoding and publishing take milliseconds.
const STAGE_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0,
    1000.0, 1800.0,
];

/// Stages timed per job, in the order they run.
pub const STAGES: &[&str] = &[
    "download",
    "decode",
    "preprocess",
    "infer_3d",
    "infer_2d",
    "postprocess",
    "encode",
    "upload",
    "publish",
];

/// Final outcome of a job, as a label value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Error,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
        }
    }
}

/// Reason a message went to the dead-letter queue, as a label value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// A job that failed for good; the label is its error kind.
    Failed(ErrorKind),
    /// A body that is not a job.
    NotAJob,
}

impl DeadLetterReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Failed(kind) => kind.as_str(),
            Self::NotAJob => "not_a_job",
        }
    }
}

const ERROR_KINDS: [ErrorKind; 3] = [ErrorKind::BadInput, ErrorKind::Transient, ErrorKind::Internal];

/// The worker's metrics and the registry that exports them.
pub struct Metrics {
    registry: Registry,
    jobs: IntCounterVec,
    job_duration: Histogram,
    stage_duration: HistogramVec,
    jobs_in_flight: IntGauge,
    download_bytes: IntCounter,
    upload_bytes: IntCounter,
    retries: IntCounter,
    dead_letters: IntCounterVec,
    broker_reconnects: IntCounter,
    model_run: HistogramVec,
    voxels: IntCounter,
    execution_provider: GaugeVec,
    bundle_info: GaugeVec,
    broker_connected: Gauge,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("thrombseg".into()), None).expect("the prefix is valid");
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(metric.clone())).expect("unique metric name");
            metric
        };
        let counter = |name: &str, help: &str| {
            let metric = IntCounter::new(name, help).expect("valid metric");
            registry.register(Box::new(metric.clone())).expect("unique metric name");
            metric
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let metric = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(metric.clone())).expect("unique metric name");
            metric
        };
        let histogram_vec = |name: &str, help: &str, labels: &[&str]| {
            let opts = HistogramOpts::new(name, help).buckets(STAGE_BUCKETS.to_vec());
            let metric = HistogramVec::new(opts, labels).expect("valid metric");
            registry.register(Box::new(metric.clone())).expect("unique metric name");
            metric
        };

        let jobs = counter_vec(
            "jobs_total",
            "Jobs that ended, by outcome and error kind (kind is none for ok).",
            &["outcome", "kind"],
        );
        let job_duration = Histogram::with_opts(
            HistogramOpts::new("job_duration_seconds", "Time from receiving a job to settling it.")
                .buckets(DURATION_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        registry
            .register(Box::new(job_duration.clone()))
            .expect("unique metric name");
        let stage_duration = histogram_vec(
            "stage_duration_seconds",
            "Time spent in each stage of a job.",
            &["stage"],
        );
        let jobs_in_flight =
            IntGauge::new("jobs_in_flight", "Jobs received and not yet settled.").expect("valid metric");
        registry
            .register(Box::new(jobs_in_flight.clone()))
            .expect("unique metric name");
        let download_bytes = counter("download_bytes_total", "Bytes of input volumes downloaded.");
        let upload_bytes = counter("upload_bytes_total", "Bytes of output archives uploaded.");
        let retries = counter("retries_total", "Jobs sent to the delay queue for another attempt.");
        let dead_letters = counter_vec(
            "dead_letters_total",
            "Messages rejected to the dead-letter queue, by reason.",
            &["reason"],
        );
        let broker_reconnects = counter(
            "broker_reconnects_total",
            "Connections to the broker opened after a loss.",
        );
        let model_run = histogram_vec(
            "model_run_seconds",
            "Time spent running one network over a whole volume, by branch.",
            &["branch"],
        );
        let voxels = counter("voxels_processed_total", "Voxels of volumes segmented successfully.");
        let execution_provider = gauge_vec(
            "execution_provider_info",
            "ONNX Runtime execution provider in use (value 1).",
            &["provider"],
        );
        let build_info = gauge_vec("build_info", "Version of the running binary (value 1).", &["version"]);
        let bundle_info = gauge_vec("bundle_info", "Model bundle loaded (value 1).", &["name", "version"]);
        let broker_connected =
            Gauge::new("broker_connected", "1 while connected to the broker and consuming.").expect("valid metric");
        registry
            .register(Box::new(broker_connected.clone()))
            .expect("unique metric name");

        jobs.with_label_values(&[Outcome::Ok.as_str(), "none"]);
        for kind in ERROR_KINDS {
            jobs.with_label_values(&[Outcome::Error.as_str(), kind.as_str()]);
            dead_letters.with_label_values(&[kind.as_str()]);
        }
        dead_letters.with_label_values(&[DeadLetterReason::NotAJob.as_str()]);
        for stage in STAGES {
            stage_duration.with_label_values(&[stage]);
        }
        for branch in ["3d", "2d"] {
            model_run.with_label_values(&[branch]);
        }
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1.0);

        Self {
            registry,
            jobs,
            job_duration,
            stage_duration,
            jobs_in_flight,
            download_bytes,
            upload_bytes,
            retries,
            dead_letters,
            broker_reconnects,
            model_run,
            voxels,
            execution_provider,
            bundle_info,
            broker_connected,
        }
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding of gathered metrics succeeds");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }

    pub fn record_job(&self, outcome: Outcome, kind: Option<ErrorKind>, seconds: f64) {
        let kind = kind.map_or("none", ErrorKind::as_str);
        self.jobs.with_label_values(&[outcome.as_str(), kind]).inc();
        self.job_duration.observe(seconds);
    }

    /// Records one stage's duration; `stage` must be one of [`STAGES`].
    pub fn record_stage(&self, stage: &'static str, seconds: f64) {
        debug_assert!(STAGES.contains(&stage), "unknown stage {stage}");
        self.stage_duration.with_label_values(&[stage]).observe(seconds);
        match stage {
            "infer_3d" => self.model_run.with_label_values(&["3d"]).observe(seconds),
            "infer_2d" => self.model_run.with_label_values(&["2d"]).observe(seconds),
            _ => {}
        }
    }

    pub fn job_started(&self) {
        self.jobs_in_flight.inc();
    }

    pub fn job_settled(&self) {
        self.jobs_in_flight.dec();
    }

    pub fn add_download_bytes(&self, bytes: usize) {
        self.download_bytes.inc_by(bytes as u64);
    }

    pub fn add_upload_bytes(&self, bytes: usize) {
        self.upload_bytes.inc_by(bytes as u64);
    }

    pub fn add_voxels(&self, voxels: usize) {
        self.voxels.inc_by(voxels as u64);
    }

    pub fn record_retry(&self) {
        self.retries.inc();
    }

    pub fn record_dead_letter(&self, reason: DeadLetterReason) {
        self.dead_letters.with_label_values(&[reason.as_str()]).inc();
    }

    pub fn record_reconnect(&self) {
        self.broker_reconnects.inc();
    }

    pub fn set_broker_connected(&self, connected: bool) {
        self.broker_connected.set(if connected { 1.0 } else { 0.0 });
    }

    pub fn set_execution_provider(&self, provider: &str) {
        self.execution_provider.with_label_values(&[provider]).set(1.0);
    }

    pub fn set_bundle(&self, name: &str, version: &str) {
        self.bundle_info.with_label_values(&[name, version]).set(1.0);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_series_exist_at_zero() {
        let text = Metrics::new().render();

        for series in [
            r#"thrombseg_jobs_total{kind="none",outcome="ok"} 0"#,
            r#"thrombseg_jobs_total{kind="bad_input",outcome="error"} 0"#,
            r#"thrombseg_jobs_total{kind="transient",outcome="error"} 0"#,
            r#"thrombseg_jobs_total{kind="internal",outcome="error"} 0"#,
            r#"thrombseg_dead_letters_total{reason="not_a_job"} 0"#,
            "thrombseg_retries_total 0",
            "thrombseg_broker_reconnects_total 0",
        ] {
            assert!(text.contains(series), "missing {series}");
        }
    }

    #[test]
    fn stage_durations_are_histograms_in_seconds() {
        let metrics = Metrics::new();

        metrics.record_stage("infer_3d", 2.0);

        let text = metrics.render();
        assert!(text.contains(r#"thrombseg_stage_duration_seconds_bucket{stage="infer_3d",le="2.5"} 1"#));
        assert!(text.contains(r#"thrombseg_model_run_seconds_count{branch="3d"} 1"#));
        assert!(text.contains("# HELP thrombseg_stage_duration_seconds Time spent in each stage of a job."));
    }
}
