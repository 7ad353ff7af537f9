//! kbatch's parallel consumer.
#![forbid(unsafe_code)]

#[cfg(feature = "unstable-codec")]
pub mod codec;
#[cfg(not(feature = "unstable-codec"))]
pub(crate) mod codec;
