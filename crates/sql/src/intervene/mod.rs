//! Interventions in SQL, one file per function: `generate(side, prompt, max_new_tokens)`, `steer(side, prompt,
//! vector, layer, alpha, max_new_tokens)`, `patchscope(side, vector, layer, scales [, k])` and `steer_search(side,
//! vector, layer, alphas, max_new_tokens)`, table functions that run the base model
//! or an organism (`side`) with the model runtime's KV-cached generation and residual-stream interventions.
//!
//! ```sql
//! SELECT alpha, text FROM steer('caps', 'The king said',
//!     (SELECT mean_diff(base, ft) FROM acts WHERE organism = 'caps' AND layer = 1 AND pos BETWEEN 1 AND 4),
//!     1, [0.0, 4.0, 8.0], 24);
//! ```
//! `side` is `base` or an organism of the default model (`configs/config.toml`), or `MODEL/base`,
//! `MODEL/ORGANISM`; each loads once per session. Vectors are literals or one-column subqueries (their first
//! row); generation is greedy.

mod args;
mod generate;
mod patchscope;
mod sides;
mod steer;
mod steer_search;
mod table;

use std::sync::Arc;

use datafusion::prelude::SessionContext;

pub use generate::Generate;
pub use patchscope::{Patchscope, PATCHSCOPE_PROMPT};
pub use sides::Sides;
pub use steer::Steer;
pub use steer_search::{SteerSearch, STEERING_PROMPTS};

/// Registers the four intervention table functions over `sides`.
pub fn register(ctx: &SessionContext, sides: &Arc<Sides>) {
    ctx.register_udtf("generate", Arc::new(Generate::new(Arc::clone(sides))));
    ctx.register_udtf("steer", Arc::new(Steer::new(Arc::clone(sides))));
    ctx.register_udtf("patchscope", Arc::new(Patchscope::new(Arc::clone(sides))));
    ctx.register_udtf("steer_search", Arc::new(SteerSearch::new(Arc::clone(sides))));
}
