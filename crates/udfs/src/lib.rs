//! DataFusion functions for comparing activation vectors of a base model and its finetune.
//!
//! Arrow and DataFusion only, no model code, so any DataFusion host can load them:
//!
//! ```
//! use datafusion::prelude::SessionContext;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let ctx = SessionContext::new();
//! diffsql_udfs::register_all(&ctx);
//! let df = ctx.sql("SELECT diff_norm([0.0, 0.0], [3.0, 4.0]) AS d").await.unwrap();
//! let batches = df.collect().await.unwrap();
//! assert_eq!(batches[0].num_rows(), 1);
//! # });
//! ```
//!
//! Vectors are `List`, `LargeList` or `FixedSizeList` columns of `Float32`, `Float16` or bfloat16 bits
//! stored as `UInt16` (see [`vector`]).
//!
//! May use: `diffsql-kernels` (the arithmetic), Arrow and DataFusion. May not use any other diffsql crate.

use std::sync::Arc;

use datafusion::logical_expr::{AggregateUDF, ScalarUDF};
use datafusion::prelude::SessionContext;

pub mod aggregate;
mod doc;
mod eval;
pub mod scalar;
#[cfg(test)]
mod testing;
pub mod vector;

/// Every scalar function this crate defines.
pub fn scalar_functions() -> Vec<Arc<ScalarUDF>> {
    use scalar::*;
    vec![
        Arc::new(ScalarUDF::from(diff_norm::DiffNorm::default())),
        Arc::new(ScalarUDF::from(cosine_sim::CosineSim::default())),
        Arc::new(ScalarUDF::from(pair_stats::PairStats::default())),
        Arc::new(ScalarUDF::from(vec_norm::VecNorm::default())),
        Arc::new(ScalarUDF::from(vec_sub::VecSub::default())),
        Arc::new(ScalarUDF::from(vec_dot::VecDot::default())),
        Arc::new(ScalarUDF::from(kl_div::KlDiv::default())),
        Arc::new(ScalarUDF::from(to_float32::ToFloat32::default())),
    ]
}

/// Every aggregate function this crate defines.
pub fn aggregate_functions() -> Vec<Arc<AggregateUDF>> {
    use aggregate::*;
    vec![
        Arc::new(AggregateUDF::from(normdiff::NormDiff::default())),
        Arc::new(AggregateUDF::from(mean_vec::MeanVec::default())),
        Arc::new(AggregateUDF::from(mean_diff::MeanDiff::default())),
        Arc::new(AggregateUDF::from(nth_largest::NthLargest::default())),
    ]
}

/// Registers every function with a session.
pub fn register_all(ctx: &SessionContext) {
    for f in scalar_functions() {
        ctx.register_udf(f.as_ref().clone());
    }
    for f in aggregate_functions() {
        ctx.register_udaf(f.as_ref().clone());
    }
}
