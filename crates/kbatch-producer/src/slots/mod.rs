//! The completion path: a table of reusable slots, one per outstanding delivery future.
//!
//! ```text
//!  send ──reserve record + bytes──pop free index──► slot[i] = PENDING ──token i──► librdkafka
//!  report(i) (poll thread): write result ─► set DONE (+ RELEASED) ─► release budget ─► wake
//!                           (a waker was registered: wake, then set RELEASED)
//!  DeliveryFuture(i): DONE? read result ─► set DETACHED
//!  whoever sets the second of RELEASED / DETACHED pushes i back on the free list
//! ```
//!
//! A delivery costs a few atomic stores and no allocation: no oneshot channel, no boxed
//! future, no per-record `Arc`. Futures awaited in order find most results already there, so
//! one wake-up resolves a whole run of them.
//!
//! The budgets (records and payload bytes held by the producer) are released at delivery,
//! when librdkafka lets go of the record, not when the caller awaits the future: a caller may
//! fire a million records and await them afterwards. The table therefore grows to the most
//! futures ever outstanding at once (append-only, lock-free indexing, slots reused through
//! the free list); its memory follows the futures the caller chose to hold.
//!
//! After [`Slots::close`] nothing is reused: a slot whose future and report are both done is
//! retired with its state kept, so a report that librdkafka delivers late (it reports what is
//! left when the client is destroyed) finds it finished and is ignored.
//!
//! # Model checking
//! The table is hand-rolled lock-free code, so `model.rs` checks it with
//! [loom](https://docs.rs/loom), which runs a test under every interleaving of its threads
//! (up to a bound on preemptions) and also lets loads read stale values where the memory
//! orderings allow it. The real `table.rs` and `future.rs` are compiled a second time inside
//! the model with `sync` pointing at loom's primitives instead of `sync.rs`: nothing is copied.
//! Loom was chosen over shuttle because the table's correctness rests on memory orderings
//! (results written with relaxed stores, published by the state word), which shuttle's
//! sequentially consistent scheduler cannot get wrong; loom does. Normal builds do not see
//! loom: it is a dev-dependency and the model is `#[cfg(test)]`.

mod future;
#[cfg(test)]
mod model;
mod sync;
mod table;
#[cfg(test)]
mod tests;

pub use future::DeliveryFuture;
pub(crate) use table::{Reserve, Slots};
