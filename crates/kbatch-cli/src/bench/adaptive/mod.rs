//! `kbatch bench adaptive`: kbatch-adaptive's `AdaptiveProducer` against kbatch's plain
//! `Producer` at fixed batch settings, at equal librdkafka settings, on a real broker.

#[allow(dead_code, reason = "the bench that drives it comes in the next commits")]
mod load;
