//! Training the new classifier head on cached bottlenecks.

pub mod head;
