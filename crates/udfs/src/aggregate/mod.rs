//! The aggregate functions, one file each, over the shared per-group state in `group_state`.

pub mod group_state;
pub mod mean_diff;
pub mod mean_vec;
pub mod normdiff;
pub mod nth_largest;
