//! Emptied vectors kept for reuse between the driver and its completion tasks.
//!
//! A batch of thousands of events needs vectors of hundreds of kilobytes (its events, their
//! delivery futures, their latencies): above the allocator's mapping threshold each is a
//! fresh mapping whose pages fault in as it fills, which at saturation cost more than the
//! copying itself. Vectors that come back are already sized and resident.

use crossbeam_queue::ArrayQueue;

/// A bounded pool of empty vectors; see the [module docs](self).
#[derive(Debug)]
pub(crate) struct VecPool<T>(ArrayQueue<Vec<T>>);

impl<T> VecPool<T> {
    /// A pool keeping at most `keep` vectors.
    pub(crate) fn new(keep: usize) -> Self {
        Self(ArrayQueue::new(keep.max(1)))
    }

    /// An empty vector with room for at least `capacity`.
    pub(crate) fn take(&self, capacity: usize) -> Vec<T> {
        match self.0.pop() {
            Some(mut v) => {
                v.reserve(capacity);
                v
            }
            None => Vec::with_capacity(capacity),
        }
    }

    /// Gives `v` back, emptied; dropped when the pool is full.
    pub(crate) fn give(&self, mut v: Vec<T>) {
        v.clear();
        if v.capacity() > 0 {
            let _ = self.0.push(v);
        }
    }

    /// A vector given back, if any.
    pub(crate) fn pop(&self) -> Option<Vec<T>> {
        self.0.pop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vector_given_back_is_taken_again_empty_and_the_pool_is_bounded() {
        let pool = VecPool::new(1);
        let mut v = pool.take(100);
        v.extend([1, 2, 3]);
        let storage = v.as_ptr();
        pool.give(v);
        pool.give(Vec::with_capacity(5)); // the pool is full: dropped
        let again = pool.take(10);
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), storage);
        assert!(pool.pop().is_none());
    }
}
