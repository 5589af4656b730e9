//! Error kinds of a job, and the one function that decides what each kind gets.

use std::time::Duration;

use crate::job::RequestError;
use crate::queue::QueueError;
use crate::segmentation::model::InferenceError;
use crate::transfer::TransferError;
use crate::volume::VolumeError;

/// Everything that can end a job early.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Transfer(#[from] TransferError),
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error(transparent)]
    Inference(#[from] InferenceError),
    #[error("encode the output archive: {0}")]
    Encode(String),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("job task failed: {0}")]
    Internal(String),
    #[error("job did not finish within its deadline of {0} s")]
    Deadline(u64),
}

/// Closed set of error kinds, as they appear in envelopes, logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input can never be segmented: a malformed body, a bad archive, a 4xx.
    BadInput,
    /// A retry may succeed: a timeout, a 5xx, a lost broker.
    Transient,
    /// A fault of this worker, such as a failed inference run.
    Internal,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadInput => "bad_input",
            Self::Transient => "transient",
            Self::Internal => "internal",
        }
    }
}

impl JobError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Request(_) | Self::Volume(_) => ErrorKind::BadInput,
            Self::Transfer(error) if error.is_transient() => ErrorKind::Transient,
            Self::Transfer(_) => ErrorKind::BadInput,
            Self::Queue(_) | Self::Deadline(_) => ErrorKind::Transient,
            Self::Inference(_) | Self::Encode(_) | Self::Internal(_) => ErrorKind::Internal,
        }
    }
}

/// How failed jobs are retried.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Attempts a job gets in all, the first included.
    pub max_attempts: u32,
    /// Delay before the second attempt; each later one doubles it.
    pub base_delay: Duration,
    /// Longest delay between two attempts.
    pub max_delay: Duration,
}

/// What happens to a failed job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Send the job to the delay queue, to come back after `delay`; no envelope yet.
    Retry { delay: Duration },
    /// Publish an ERROR envelope and reject the message to the dead-letter queue.
    Fail,
}

/// Decides the fate of a job that failed on its `attempt`-th try (counting from 1).
///
/// Only transient failures are retried, and only while attempts remain. `jitter` in [0, 1)
/// spreads the delays of jobs that failed together: the delay is drawn from the upper half of
/// the exponential step, so it never drops below half of it.
pub fn decide(kind: ErrorKind, attempt: u32, policy: &RetryPolicy, jitter: f64) -> Decision {
    if kind != ErrorKind::Transient || attempt >= policy.max_attempts {
        return Decision::Fail;
    }

    let exponent = attempt.saturating_sub(1).min(30);
    let step = policy.base_delay.saturating_mul(1 << exponent).min(policy.max_delay);
    let delay = step.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0));
    Decision::Retry { delay }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 4,
        base_delay: Duration::from_secs(2),
        max_delay: Duration::from_secs(5),
    };

    #[test]
    fn bad_input_fails_at_once() {
        assert_eq!(decide(ErrorKind::BadInput, 1, &POLICY, 0.0), Decision::Fail);
        assert_eq!(decide(ErrorKind::Internal, 1, &POLICY, 0.0), Decision::Fail);
    }

    #[test]
    fn transient_backs_off_exponentially_to_the_cap() {
        let delay = |attempt| match decide(ErrorKind::Transient, attempt, &POLICY, 0.999_999) {
            Decision::Retry { delay } => delay.as_secs_f64(),
            Decision::Fail => panic!("attempt {attempt} should be retried"),
        };

        assert!((delay(1) - 2.0).abs() < 1e-3);
        assert!((delay(2) - 4.0).abs() < 1e-3);
        assert!((delay(3) - 5.0).abs() < 1e-3, "capped at max_delay");
    }

    #[test]
    fn transient_fails_after_last_attempt() {
        assert_eq!(decide(ErrorKind::Transient, 4, &POLICY, 0.5), Decision::Fail);
        assert_eq!(decide(ErrorKind::Transient, 9, &POLICY, 0.5), Decision::Fail);
    }

    #[test]
    fn jitter_keeps_delay_in_upper_half() {
        let Decision::Retry { delay } = decide(ErrorKind::Transient, 1, &POLICY, 0.0) else {
            panic!("first attempt is retried");
        };

        assert_eq!(delay, Duration::from_secs(1));
    }

    #[test]
    fn forbidden_download_is_bad_input() {
        let error = JobError::Transfer(TransferError::Status {
            direction: crate::transfer::Direction::Download,
            url: String::new(),
            status: 403,
            s3_code: Some("AccessDenied".into()),
        });

        assert_eq!(error.kind(), ErrorKind::BadInput);
    }
}
