//! The synchronization primitives the slot table is built on. The loom model (`model.rs`)
//! compiles the same table against its own module of this shape.

pub(crate) use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};
pub(crate) use std::sync::{Mutex, MutexGuard};

pub(crate) use futures::task::AtomicWaker;
pub(crate) use tokio::sync::Notify;

/// Indices of reusable slots.
pub(crate) type FreeList = crossbeam_queue::SegQueue<u32>;
