//! Integration tests: one binary, a module per area. They run the real ONNX models, the local
//! RabbitMQ, and a SeaweedFS server and a Prometheus server that the tests start on loopback.

mod bad_input;
mod cli;
mod delivery;
mod golden;
mod nifti;
mod preview;
mod prometheus;
mod support;
mod transfer;
mod worker;
