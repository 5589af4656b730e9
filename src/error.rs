//! Error kinds of a job, and the one function that decides what each kind gets.

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

/// What happens to the delivery of a failed job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Publish an ERROR envelope, then reject without requeue (the broker dead-letters it).
    Reject,
    /// Return the message to the queue for another try, with no envelope yet.
    Requeue,
}

impl JobError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Request(_) | Self::Volume(_) => ErrorKind::BadInput,
            Self::Transfer(error) if error.is_transient() => ErrorKind::Transient,
            Self::Transfer(_) => ErrorKind::BadInput,
            Self::Queue(_) => ErrorKind::Transient,
            Self::Inference(_) | Self::Encode(_) | Self::Internal(_) => ErrorKind::Internal,
        }
    }
}

/// Decides the fate of a failed delivery from its error kind and whether the broker has
/// delivered it before.
///
/// A transient failure is requeued once; a second failure of a redelivered job is final, so a
/// job that keeps failing ends with an ERROR envelope instead of cycling forever.
pub fn disposition(kind: ErrorKind, redelivered: bool) -> Disposition {
    match kind {
        ErrorKind::Transient if !redelivered => Disposition::Requeue,
        _ => Disposition::Reject,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_input_is_rejected_at_once() {
        assert_eq!(disposition(ErrorKind::BadInput, false), Disposition::Reject);
    }

    #[test]
    fn transient_is_requeued_once() {
        assert_eq!(disposition(ErrorKind::Transient, false), Disposition::Requeue);
        assert_eq!(disposition(ErrorKind::Transient, true), Disposition::Reject);
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
