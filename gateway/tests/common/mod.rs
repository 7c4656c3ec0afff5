//! The gateway integration tests' setup: `gateway::testing`, shared with the cross-service tests
//! in `e2e/`.

#![allow(unused_imports)]

pub use gateway::testing::*;
