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

/// Retry settings for failed jobs.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Attempts a job gets in all, the first included.
    pub max_attempts: u32,
    /// Delay before the second attempt; each later one doubles it.
    pub base_delay: Duration,
    /// Maximum delay between two attempts.
    pub max_delay: Duration,
}

/// Fate of a failed job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Send the job to the delay queue, to come back after `delay`; no envelope yet.
    Retry { delay: Duration },
    /// Publish an ERROR envelope and reject the message to the dead-letter queue.
    Fail,
}

impl RetryPolicy {
    /// Returns the wait before attempt `attempt + 1`: `base_delay × 2^(attempt − 1)`, capped at
    /// `max_delay`.
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(30);
        self.base_delay.saturating_mul(1 << exponent).min(self.max_delay)
    }

    /// Returns every distinct delay a job can wait, in attempt order.
    pub fn delays(&self) -> Vec<Duration> {
        let mut delays: Vec<Duration> = (1..self.max_attempts)
            .map(|attempt| self.delay_after(attempt))
            .collect();
        delays.dedup();
        delays
    }
}

/// Decides the fate of a job that failed on its `attempt`-th try (counting from 1): only
/// transient failures are retried, and only while attempts remain.
pub fn decide(kind: ErrorKind, attempt: u32, policy: &RetryPolicy) -> Decision {
    if kind != ErrorKind::Transient || attempt >= policy.max_attempts {
        return Decision::Fail;
    }
    Decision::Retry {
        delay: policy.delay_after(attempt),
    }
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
        assert_eq!(decide(ErrorKind::BadInput, 1, &POLICY), Decision::Fail);
        assert_eq!(decide(ErrorKind::Internal, 1, &POLICY), Decision::Fail);
    }

    #[test]
    fn transient_backs_off_exponentially_to_the_cap() {
        let delay = |attempt| match decide(ErrorKind::Transient, attempt, &POLICY) {
            Decision::Retry { delay } => delay,
            Decision::Fail => panic!("attempt {attempt} should be retried"),
        };

        assert_eq!(delay(1), Duration::from_secs(2));
        assert_eq!(delay(2), Duration::from_secs(4));
        assert_eq!(delay(3), Duration::from_secs(5), "capped at max_delay");
    }

    #[test]
    fn transient_fails_after_last_attempt() {
        assert_eq!(decide(ErrorKind::Transient, 4, &POLICY), Decision::Fail);
        assert_eq!(decide(ErrorKind::Transient, 9, &POLICY), Decision::Fail);
    }

    #[test]
    fn delays_list_each_wait_once() {
        let policy = RetryPolicy {
            max_attempts: 6,
            ..POLICY
        };

        assert_eq!(
            policy.delays(),
            vec![Duration::from_secs(2), Duration::from_secs(4), Duration::from_secs(5)]
        );
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
