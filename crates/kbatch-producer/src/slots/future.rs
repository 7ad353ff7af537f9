//! The per-record delivery future.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use kbatch_client::Delivered;

use super::table::Slots;
use crate::error::ProduceError;

/// Resolves when the broker acknowledged the record (or it failed for good). Dropping it
/// does not cancel the record; its result is then discarded.
#[must_use = "a delivery future tells whether the record reached Kafka"]
#[derive(Debug)]
pub struct DeliveryFuture {
    slots: Arc<Slots>,
    slot: u32,
    done: bool,
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slots")
            .field("pending_records", &self.pending_records())
            .finish_non_exhaustive()
    }
}

impl DeliveryFuture {
    pub(crate) fn new(slots: Arc<Slots>, slot: u32) -> Self {
        Self {
            slots,
            slot,
            done: false,
        }
    }

    /// The result if the record was already acknowledged or failed, without waiting.
    /// After `Some`, the future is spent: polling it again panics.
    pub fn try_result(&mut self) -> Option<Result<Delivered, ProduceError>> {
        assert!(!self.done, "DeliveryFuture polled after completion");
        let r = self.slots.try_result(self.slot)?;
        self.finish();
        Some(r)
    }

    fn finish(&mut self) {
        self.done = true;
        self.slots.detach(self.slot);
    }
}

impl Future for DeliveryFuture {
    type Output = Result<Delivered, ProduceError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        assert!(!self.done, "DeliveryFuture polled after completion");
        match self.slots.poll_result(self.slot, cx.waker()) {
            Some(r) => {
                self.finish();
                Poll::Ready(r)
            }
            None => Poll::Pending,
        }
    }
}

impl Drop for DeliveryFuture {
    fn drop(&mut self) {
        if !self.done {
            self.slots.detach(self.slot);
        }
    }
}
