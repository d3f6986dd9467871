//! Trained dictionaries in SQL, one file per function: the table functions `latents(name)` and
//! `training_curve(name)`, and the scalar functions `crosscoder_encode`, `sae_encode` and `pca_project`, over
//! a per-session [`DictionaryRegistry`].

mod crosscoder_encode;
mod encode;
mod latents;
mod pca_project;
mod registry;
mod sae_encode;
mod training_curve;

use std::sync::Arc;

use datafusion::logical_expr::{Documentation, ScalarUDF};
use datafusion::prelude::SessionContext;

pub use crosscoder_encode::CrosscoderEncode;
pub use latents::Latents;
pub use pca_project::PcaProject;
pub use registry::{DictionaryRegistry, LoadedDictionary};
pub use sae_encode::SaeEncode;
pub use training_curve::TrainingCurve;

/// Registers the dictionary functions over `registry`'s cache.
pub fn register(ctx: &SessionContext, registry: Arc<DictionaryRegistry>) {
    ctx.register_udtf("latents", Arc::new(Latents::new(Arc::clone(&registry))));
    ctx.register_udtf("training_curve", Arc::new(TrainingCurve::new(Arc::clone(&registry))));
    ctx.register_udf(ScalarUDF::from(CrosscoderEncode::new(Arc::clone(&registry))));
    ctx.register_udf(ScalarUDF::from(SaeEncode::new(Arc::clone(&registry))));
    ctx.register_udf(ScalarUDF::from(PcaProject::new(registry)));
}

/// The documentation of the dictionary scalar functions, for `\\df`.
pub fn documentation() -> Vec<&'static Documentation> {
    vec![
        crosscoder_encode::documentation(),
        sae_encode::documentation(),
        pca_project::documentation(),
    ]
}
