//! The two TensorBoard protobuf messages scalars need, declared with prost's derive: the
//! subset of `tensorflow/core/util/event.proto` (`Event`) and
//! `tensorflow/core/framework/summary.proto` (`Summary`, `Summary.Value`) that carries a
//! file version or scalar values, with the same field numbers and types.

/// `tensorflow.Event`: one record of an event file.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    /// Seconds since the Unix epoch.
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    /// The global step the values belong to.
    #[prost(int64, tag = "2")]
    pub step: i64,
    /// What the event holds.
    #[prost(oneof = "event::What", tags = "3, 5")]
    pub what: Option<event::What>,
}

/// `Event`'s `what` oneof.
pub mod event {
    /// What an event holds (the fields this crate writes).
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum What {
        /// The file's format version, the first event of every file: `brain.Event:2`.
        #[prost(string, tag = "3")]
        FileVersion(String),
        /// Summary values.
        #[prost(message, tag = "5")]
        Summary(super::Summary),
    }
}

/// `tensorflow.Summary`: values recorded at one step.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    /// The values.
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value` holding a scalar (`simple_value`, a member of the `value`
/// oneof: declared optional so that 0.0 is written, as a set oneof member is).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryValue {
    /// The series' name, e.g. `test/loss`.
    #[prost(string, tag = "1")]
    pub tag: String,
    /// The scalar.
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
}
