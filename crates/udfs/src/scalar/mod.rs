//! The scalar functions, one file each.

pub mod cosine_sim;
pub mod diff_norm;
pub mod kl_div;
pub mod pair_stats;
pub mod to_float32;
pub mod vec_dot;
pub mod vec_norm;
pub mod vec_sub;
