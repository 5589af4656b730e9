//! Job requests and status envelopes: the two JSON documents the platform exchanges with us.
//!
//! A request is either the plain form (`job_id`, `input_file_url`, `output_file_url`,
//! `explain`, and `non_mdc_mean` and `non_mdc_var` for NIfTI inputs) or one of the MLflow scoring shapes the existing platform sends
//! (`dataframe_split`, `dataframe_records`, `inputs`) carrying the two URL columns in one row.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::segmentation::{Scores, StageTimings};
use crate::volume::Statistics;

/// Column or field holding the pre-signed download URL.
pub const INPUT_URL_FIELD: &str = "input_file_url";
/// Column or field holding the pre-signed upload URL.
pub const OUTPUT_URL_FIELD: &str = "output_file_url";

/// A parsed job request.
#[derive(Clone, PartialEq)]
pub struct JobRequest {
    pub job_id: String,
    pub input_file_url: String,
    pub output_file_url: String,
    pub explain: bool,
    /// Statistics for a NIfTI input, which cannot carry them; an npz input carries its own.
    pub statistics: Option<Statistics>,
}

impl std::fmt::Debug for JobRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobRequest")
            .field("job_id", &self.job_id)
            .field("input_file_url", &crate::transfer::redact(&self.input_file_url))
            .field("output_file_url", &crate::transfer::redact(&self.output_file_url))
            .field("explain", &self.explain)
            .field("statistics", &self.statistics)
            .finish()
    }
}

/// Reasons a message body is not a job. Messages never quote URL values.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RequestError {
    #[error("job body is not JSON: {0}")]
    NotJson(String),
    #[error("job body must be a JSON object")]
    NotObject,
    #[error("job body has no `{0}` (expected a string URL)")]
    MissingField(&'static str),
    #[error("job body field `{0}` must be {1}")]
    WrongType(&'static str, &'static str),
    #[error("job body `{shape}` must carry exactly one row, got {rows}")]
    RowCount { shape: &'static str, rows: usize },
    #[error("job has no id: set `job_id` in the body, or the AMQP message_id or correlation_id")]
    MissingId,
    #[error("job body has one statistic but not `{0}`: give both non_mdc_mean and non_mdc_var, or neither")]
    MissingStatistic(&'static str),
}

/// Identifiers the transport carries beside the body, used when the body has no `job_id`.
#[derive(Clone, Debug, Default)]
pub struct TransportIds {
    pub message_id: Option<String>,
    pub correlation_id: Option<String>,
}

impl JobRequest {
    /// Parses a message body in any accepted shape.
    pub fn parse(body: &[u8], ids: &TransportIds) -> Result<Self, RequestError> {
        let value: Value = serde_json::from_slice(body).map_err(|e| RequestError::NotJson(e.to_string()))?;
        let Value::Object(object) = value else {
            return Err(RequestError::NotObject);
        };

        let row = mlflow_row(&object)?.unwrap_or_else(|| object.clone());
        let input_file_url = string_field(&row, INPUT_URL_FIELD)?;
        let output_file_url = string_field(&row, OUTPUT_URL_FIELD)?;
        let explain = match object.get("explain").or_else(|| row.get("explain")) {
            None | Some(Value::Null) => false,
            Some(Value::Bool(flag)) => *flag,
            Some(_) => return Err(RequestError::WrongType("explain", "a boolean")),
        };

        let statistic = |key: &'static str| match object.get(key).or_else(|| row.get(key)) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(number)) => Ok(number.as_f64()),
            Some(_) => Err(RequestError::WrongType(key, "a number")),
        };
        let statistics = match (statistic("non_mdc_mean")?, statistic("non_mdc_var")?) {
            (Some(non_mdc_mean), Some(non_mdc_var)) => Some(Statistics {
                non_mdc_mean,
                non_mdc_var,
            }),
            (None, None) => None,
            (Some(_), None) => return Err(RequestError::MissingStatistic("non_mdc_var")),
            (None, Some(_)) => return Err(RequestError::MissingStatistic("non_mdc_mean")),
        };

        let job_id = match object.get("job_id") {
            Some(Value::String(id)) if !id.is_empty() => id.clone(),
            Some(Value::Number(id)) => id.to_string(),
            None | Some(Value::Null) => ids
                .message_id
                .clone()
                .or_else(|| ids.correlation_id.clone())
                .filter(|id| !id.is_empty())
                .ok_or(RequestError::MissingId)?,
            Some(_) => return Err(RequestError::WrongType("job_id", "a non-empty string")),
        };

        Ok(Self {
            job_id,
            input_file_url,
            output_file_url,
            explain,
            statistics,
        })
    }
}

/// Extracts the one row of an MLflow scoring request, or `None` for a plain body.
fn mlflow_row(object: &Map<String, Value>) -> Result<Option<Map<String, Value>>, RequestError> {
    if let Some(split) = object.get("dataframe_split") {
        return split_row(split, "dataframe_split").map(Some);
    }
    if let Some(records) = object.get("dataframe_records") {
        return records_row(records, "dataframe_records").map(Some);
    }
    match object.get("inputs") {
        None => Ok(None),
        Some(Value::Array(_)) => records_row(&object["inputs"], "inputs").map(Some),
        Some(Value::Object(columns)) if columns.contains_key("columns") => {
            split_row(&object["inputs"], "inputs").map(Some)
        }
        Some(Value::Object(columns)) => columns_row(columns).map(Some),
        Some(_) => Err(RequestError::WrongType("inputs", "an object or an array")),
    }
}

/// `{"columns": [...], "data": [[...]]}`
fn split_row(split: &Value, shape: &'static str) -> Result<Map<String, Value>, RequestError> {
    let columns = split
        .get("columns")
        .and_then(Value::as_array)
        .ok_or(RequestError::WrongType(shape, "an object with `columns` and `data`"))?;
    let data = split
        .get("data")
        .and_then(Value::as_array)
        .ok_or(RequestError::WrongType(shape, "an object with `columns` and `data`"))?;
    let [row] = data.as_slice() else {
        return Err(RequestError::RowCount {
            shape,
            rows: data.len(),
        });
    };
    let row = row
        .as_array()
        .ok_or(RequestError::WrongType(shape, "rows given as arrays"))?;

    Ok(columns
        .iter()
        .zip(row)
        .filter_map(|(name, value)| Some((name.as_str()?.to_owned(), value.clone())))
        .collect())
}

/// `[{"input_file_url": ..., "output_file_url": ...}]`
fn records_row(records: &Value, shape: &'static str) -> Result<Map<String, Value>, RequestError> {
    let records = records
        .as_array()
        .ok_or(RequestError::WrongType(shape, "an array of records"))?;
    match records.as_slice() {
        [Value::Object(row)] => Ok(row.clone()),
        [_] => Err(RequestError::WrongType(shape, "an array of objects")),
        _ => Err(RequestError::RowCount {
            shape,
            rows: records.len(),
        }),
    }
}

/// `{"input_file_url": ["..."], "output_file_url": ["..."]}` or the same with plain strings.
fn columns_row(columns: &Map<String, Value>) -> Result<Map<String, Value>, RequestError> {
    let mut row = Map::new();
    for (name, value) in columns {
        let cell = match value {
            Value::Array(cells) if cells.len() == 1 => cells[0].clone(),
            Value::Array(cells) => {
                return Err(RequestError::RowCount {
                    shape: "inputs",
                    rows: cells.len(),
                });
            }
            other => other.clone(),
        };
        row.insert(name.clone(), cell);
    }
    Ok(row)
}

fn string_field(row: &Map<String, Value>, field: &'static str) -> Result<String, RequestError> {
    match row.get(field) {
        Some(Value::String(url)) if !url.is_empty() => Ok(url.clone()),
        None | Some(Value::Null) => Err(RequestError::MissingField(field)),
        Some(_) => Err(RequestError::WrongType(field, "a non-empty string")),
    }
}

/// Final outcome of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Ok,
    Error,
}

/// The status envelope published when a job ends.
#[derive(Clone, Debug, Serialize)]
pub struct StatusEnvelope {
    pub job_id: String,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<EnvelopeError>,
    /// Delivery attempt that produced this envelope, counting from 1.
    pub attempt: u32,
    /// Seconds per stage, in the order the stages ran.
    pub stages: Stages,
    pub bundle: BundleInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thrombus_probability: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f32>,
}

/// The error part of an ERROR envelope.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct EnvelopeError {
    /// Closed set of error kinds, such as `bad_input` or `transient`.
    pub kind: &'static str,
    pub message: String,
}

/// Name and version of the bundle that ran the job.
#[derive(Clone, Debug, Serialize)]
pub struct BundleInfo {
    pub name: String,
    pub version: String,
}

/// Seconds per stage; a stage that did not run is absent.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Stages {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub download: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decode: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preprocess: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub infer_3d: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub infer_2d: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postprocess: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encode: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload: Option<f64>,
}

impl Stages {
    /// Records the compute stages of a finished segmentation.
    pub fn record_compute(&mut self, timings: &StageTimings) {
        self.preprocess = Some(timings.preprocess);
        self.infer_3d = Some(timings.infer_3d);
        self.infer_2d = Some(timings.infer_2d);
        self.postprocess = Some(timings.postprocess);
    }
}

impl StatusEnvelope {
    /// Builds an OK envelope, with the scores when the job requested an explanation.
    pub fn ok(job_id: String, attempt: u32, stages: Stages, bundle: BundleInfo, scores: Option<Scores>) -> Self {
        Self {
            job_id,
            status: Status::Ok,
            error: None,
            attempt,
            stages,
            bundle,
            thrombus_probability: scores.map(|s| s.thrombus_probability),
            confidence: scores.map(|s| s.confidence),
        }
    }

    /// Builds an ERROR envelope.
    pub fn error(job_id: String, attempt: u32, stages: Stages, bundle: BundleInfo, error: EnvelopeError) -> Self {
        Self {
            job_id,
            status: Status::Error,
            error: Some(error),
            attempt,
            stages,
            bundle,
            thrombus_probability: None,
            confidence: None,
        }
    }

    /// Serialises to one JSON line.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("envelope fields always serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IN: &str = "http://127.0.0.1:9000/b/in.npz?X-Amz-Signature=abc";
    const OUT: &str = "http://127.0.0.1:9000/b/out.npz?X-Amz-Signature=def";

    fn parse(body: &str) -> Result<JobRequest, RequestError> {
        JobRequest::parse(body.as_bytes(), &TransportIds::default())
    }

    #[test]
    fn plain_body_parses() {
        let body = format!(r#"{{"job_id":"j1","input_file_url":"{IN}","output_file_url":"{OUT}","explain":true}}"#);

        let job = parse(&body).unwrap();

        assert_eq!(job.job_id, "j1");
        assert_eq!(job.input_file_url, IN);
        assert_eq!(job.output_file_url, OUT);
        assert!(job.explain);
        assert_eq!(job.statistics, None);
    }

    #[test]
    fn statistics_parse_in_pairs() {
        let both = format!(
            r#"{{"job_id":"j1","input_file_url":"{IN}","output_file_url":"{OUT}","non_mdc_mean":-3,"non_mdc_var":90.5}}"#
        );
        let mean_only =
            format!(r#"{{"job_id":"j1","input_file_url":"{IN}","output_file_url":"{OUT}","non_mdc_mean":40}}"#);
        let text = format!(
            r#"{{"job_id":"j1","input_file_url":"{IN}","output_file_url":"{OUT}","non_mdc_mean":"40","non_mdc_var":9}}"#
        );

        let statistics = parse(&both).unwrap().statistics.unwrap();

        assert_eq!(statistics.non_mdc_mean, -3.0);
        assert_eq!(statistics.non_mdc_var, 90.5);
        assert_eq!(
            parse(&mean_only).unwrap_err(),
            RequestError::MissingStatistic("non_mdc_var")
        );
        assert_eq!(
            parse(&text).unwrap_err(),
            RequestError::WrongType("non_mdc_mean", "a number")
        );
    }

    #[test]
    fn mlflow_shapes_parse_with_transport_id() {
        let ids = TransportIds {
            message_id: Some("m-7".into()),
            correlation_id: Some("c-9".into()),
        };
        let bodies = [
            format!(
                r#"{{"dataframe_split":{{"columns":["input_file_url","output_file_url"],"data":[["{IN}","{OUT}"]]}}}}"#
            ),
            format!(r#"{{"dataframe_records":[{{"input_file_url":"{IN}","output_file_url":"{OUT}"}}]}}"#),
            format!(r#"{{"inputs":{{"input_file_url":["{IN}"],"output_file_url":["{OUT}"]}}}}"#),
            format!(r#"{{"inputs":[{{"input_file_url":"{IN}","output_file_url":"{OUT}"}}]}}"#),
        ];

        for body in bodies {
            let job = JobRequest::parse(body.as_bytes(), &ids).unwrap();
            assert_eq!(job.job_id, "m-7", "{body}");
            assert_eq!(job.input_file_url, IN, "{body}");
            assert_eq!(job.output_file_url, OUT, "{body}");
            assert!(!job.explain, "{body}");
        }
    }

    #[test]
    fn correlation_id_used_without_message_id() {
        let ids = TransportIds {
            message_id: None,
            correlation_id: Some("c-9".into()),
        };
        let body = format!(r#"{{"dataframe_records":[{{"input_file_url":"{IN}","output_file_url":"{OUT}"}}]}}"#);

        let job = JobRequest::parse(body.as_bytes(), &ids).unwrap();

        assert_eq!(job.job_id, "c-9");
    }

    #[test]
    fn bad_bodies_are_rejected_with_reason() {
        let cases = [
            ("not json", "not JSON"),
            ("[1,2]", "JSON object"),
            (r#"{"job_id":"a","output_file_url":"x"}"#, "input_file_url"),
            (r#"{"job_id":"a","input_file_url":"x"}"#, "output_file_url"),
            (
                r#"{"job_id":"a","input_file_url":5,"output_file_url":"x"}"#,
                "non-empty string",
            ),
            (r#"{"input_file_url":"x","output_file_url":"y"}"#, "no id"),
            (r#"{"dataframe_records":[]}"#, "exactly one row"),
            (
                r#"{"job_id":"a","input_file_url":"x","output_file_url":"y","explain":"yes"}"#,
                "boolean",
            ),
        ];

        for (body, expected) in cases {
            let message = parse(body).unwrap_err().to_string();
            assert!(message.contains(expected), "{body}: {message}");
        }
    }

    #[test]
    fn debug_hides_query_strings() {
        let body = format!(r#"{{"job_id":"j1","input_file_url":"{IN}","output_file_url":"{OUT}"}}"#);

        let printed = format!("{:?}", parse(&body).unwrap());

        assert!(!printed.contains("Signature"), "{printed}");
        assert!(printed.contains("/b/in.npz"), "{printed}");
    }

    #[test]
    fn envelope_serialises_status_uppercase() {
        let bundle = BundleInfo {
            name: "n".into(),
            version: "v".into(),
        };
        let error = EnvelopeError {
            kind: "bad_input",
            message: "m".into(),
        };

        let json = StatusEnvelope::error("j".into(), 1, Stages::default(), bundle, error).to_json();

        assert!(json.contains(r#""status":"ERROR""#), "{json}");
        assert!(json.contains(r#""kind":"bad_input""#), "{json}");
        assert!(!json.contains("thrombus_probability"), "{json}");
    }
}
