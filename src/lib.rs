//! `thrombseg`: thrombus segmentation of CT volumes, served from a RabbitMQ queue.
//!
//! A job flows one way through the modules: [`job`] parses the request, [`transfer`] downloads
//! the volume, [`volume`] decodes it, [`preprocess`] and [`segmentation`] compute the masks,
//! [`volume`] encodes them, [`transfer`] uploads them, and [`queue`] publishes the envelope.
//! [`worker`] runs that life for one delivery; [`commands`] wires it to the command line.

pub mod commands;
pub mod error;
pub mod health;
pub mod job;
pub mod metrics;
pub mod preprocess;
pub mod queue;
pub mod render;
pub mod segmentation;
pub mod settings;
pub mod telemetry;
pub mod transfer;
pub mod volume;
pub mod worker;
