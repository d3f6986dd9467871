//! Per-group state shared by the aggregates, driving both DataFusion accumulator interfaces from one
//! implementation: [`Groups`] (`GroupsAccumulator`, used under `GROUP BY`) and [`Single`] (`Accumulator`,
//! used without `GROUP BY` and in windows).

use std::fmt::Debug;
use std::ops::Range;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Float64Array, ListArray, UInt64Array};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type, UInt64Type};
use datafusion::common::{exec_err, Result, ScalarValue};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{Accumulator, EmitTo, GroupsAccumulator};

use crate::eval::VectorBuilder;
use crate::vector::Vectors;

/// What an aggregate keeps per group.
pub trait GroupState: Debug + Send + Sync + 'static {
    /// Adds input rows; row `i` goes to group `groups[i]` unless `filter` rejects it.
    fn update(&mut self, values: &[ArrayRef], groups: &[usize], filter: Option<&BooleanArray>, n: usize) -> Result<()>;
    /// Adds partial states produced by [`GroupState::state`].
    fn merge(&mut self, states: &[ArrayRef], groups: &[usize], n: usize) -> Result<()>;
    /// Final values of groups `range`.
    fn evaluate(&self, range: Range<usize>) -> Result<ArrayRef>;
    /// Partial states of groups `range`.
    fn state(&self, range: Range<usize>) -> Result<Vec<ArrayRef>>;
    /// Forgets the first `n` groups (after they were emitted).
    fn drain(&mut self, n: usize);
    /// Number of groups held.
    fn len(&self) -> usize;
    /// True when no group is held yet.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Bytes held.
    fn size(&self) -> usize;
    /// A new, empty state of the same function.
    fn fresh(&self) -> Self
    where
        Self: Sized;
}

/// Whether row `i` passes an optional `FILTER (WHERE ...)` mask.
pub fn passes(filter: Option<&BooleanArray>, i: usize) -> bool {
    filter.is_none_or(|f| f.is_valid(i) && f.value(i))
}

fn emit_range(emit_to: EmitTo, len: usize) -> usize {
    match emit_to {
        EmitTo::All => len,
        EmitTo::First(n) => n.min(len),
    }
}

/// A [`GroupState`] as a DataFusion `GroupsAccumulator`.
#[derive(Debug)]
pub struct Groups<S>(pub S);

impl<S: GroupState> GroupsAccumulator for Groups<S> {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.0.update(values, group_indices, opt_filter, total_num_groups)
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let n = emit_range(emit_to, self.0.len());
        let out = self.0.evaluate(0..n)?;
        self.0.drain(n);
        Ok(out)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let n = emit_range(emit_to, self.0.len());
        let out = self.0.state(0..n)?;
        self.0.drain(n);
        Ok(out)
    }

    fn merge_batch(&mut self, values: &[ArrayRef], group_indices: &[usize], total_num_groups: usize) -> Result<()> {
        self.0.merge(values, group_indices, total_num_groups)
    }

    fn convert_to_state(&self, values: &[ArrayRef], opt_filter: Option<&BooleanArray>) -> Result<Vec<ArrayRef>> {
        // Each input row becomes its own partial state (rows the filter drops count as empty).
        let rows = values.first().map_or(0, |v| v.len());
        let mut state = self.0.fresh();
        state.update(values, &(0..rows).collect::<Vec<_>>(), opt_filter, rows)?;
        state.state(0..rows)
    }

    fn size(&self) -> usize {
        self.0.size()
    }
}

/// A [`GroupState`] holding one group, as a DataFusion `Accumulator`.
#[derive(Debug)]
pub struct Single<S>(pub S);

impl<S: GroupState> Accumulator for Single<S> {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let rows = values.first().map_or(0, |v| v.len());
        self.0.update(values, &vec![0; rows], None, 1)
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let rows = states.first().map_or(0, |v| v.len());
        self.0.merge(states, &vec![0; rows], 1)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        if self.0.is_empty() {
            self.0.update(&[], &[], None, 1)?;
        }
        ScalarValue::try_from_array(&self.0.evaluate(0..1)?, 0)
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        if self.0.is_empty() {
            self.0.update(&[], &[], None, 1)?;
        }
        self.0
            .state(0..1)?
            .iter()
            .map(|a| ScalarValue::try_from_array(a, 0))
            .collect()
    }

    fn size(&self) -> usize {
        self.0.size()
    }
}

/// Mean over the group of a per-row value computed from two vectors (e.g. ‖ft − base‖ for `normdiff`).
#[derive(Debug)]
pub struct MeanOfPairs {
    function: &'static str,
    kernel: fn(&[f32], &[f32]) -> f64,
    sums: Vec<f64>,
    counts: Vec<u64>,
}

impl MeanOfPairs {
    /// State for `function`, whose per-row value is `kernel(a, b)`.
    pub fn new(function: &'static str, kernel: fn(&[f32], &[f32]) -> f64) -> Self {
        Self {
            function,
            kernel,
            sums: Vec::new(),
            counts: Vec::new(),
        }
    }

    /// The partial-state fields: a float64 sum and a uint64 count.
    pub fn state_fields(name: &str) -> Vec<FieldRef> {
        vec![
            Arc::new(Field::new(format_state_name(name, "sum"), DataType::Float64, true)),
            Arc::new(Field::new(format_state_name(name, "count"), DataType::UInt64, true)),
        ]
    }

    fn grow(&mut self, n: usize) {
        if self.sums.len() < n {
            self.sums.resize(n, 0.0);
            self.counts.resize(n, 0);
        }
    }
}

impl GroupState for MeanOfPairs {
    fn update(&mut self, values: &[ArrayRef], groups: &[usize], filter: Option<&BooleanArray>, n: usize) -> Result<()> {
        self.grow(n);
        if groups.is_empty() {
            return Ok(());
        }
        let (a, b) = two_vector_args(self.function, values)?;
        let (va, vb) = (
            Vectors::try_new(self.function, a.as_ref())?,
            Vectors::try_new(self.function, b.as_ref())?,
        );
        let (mut sa, mut sb) = (Vec::new(), Vec::new());
        for (i, &g) in groups.iter().enumerate() {
            if !passes(filter, i) {
                continue;
            }
            if let (Some(x), Some(y)) = (va.row(i, &mut sa), vb.row(i, &mut sb)) {
                if x.len() != y.len() {
                    return va.length_mismatch(x.len(), y.len());
                }
                self.sums[g] += (self.kernel)(x, y);
                self.counts[g] += 1;
            }
        }
        Ok(())
    }

    fn merge(&mut self, states: &[ArrayRef], groups: &[usize], n: usize) -> Result<()> {
        self.grow(n);
        let [sums, counts] = states else {
            return exec_err!("{}: expected 2 state columns, got {}", self.function, states.len());
        };
        let sums = sums.as_primitive::<Float64Type>();
        let counts = counts.as_primitive::<UInt64Type>();
        for (i, &g) in groups.iter().enumerate() {
            if counts.is_valid(i) {
                self.sums[g] += sums.value(i);
                self.counts[g] += counts.value(i);
            }
        }
        Ok(())
    }

    fn evaluate(&self, range: Range<usize>) -> Result<ArrayRef> {
        let out: Float64Array = range
            .map(|g| (self.counts[g] > 0).then(|| self.sums[g] / self.counts[g] as f64))
            .collect();
        Ok(Arc::new(out))
    }

    fn state(&self, range: Range<usize>) -> Result<Vec<ArrayRef>> {
        Ok(vec![
            Arc::new(Float64Array::from(self.sums[range.clone()].to_vec())),
            Arc::new(UInt64Array::from(self.counts[range].to_vec())),
        ])
    }

    fn drain(&mut self, n: usize) {
        self.sums.drain(..n);
        self.counts.drain(..n);
    }

    fn len(&self) -> usize {
        self.counts.len()
    }

    fn size(&self) -> usize {
        self.sums.capacity() * 8 + self.counts.capacity() * 8 + size_of::<Self>()
    }

    fn fresh(&self) -> Self {
        Self::new(self.function, self.kernel)
    }
}

/// Which rows a [`MeanVector`] averages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VectorTerm {
    /// The one argument, `v`.
    Value,
    /// The second argument minus the first, `ft − base`.
    Difference,
    /// The first argument `v` weighted by the second, a number `w ≥ 0`: Σ w·v / Σ w.
    Weighted,
}

/// Element-wise mean over the group of a vector (or a difference of two, or weighted vectors), summed in f64.
#[derive(Debug)]
pub struct MeanVector {
    function: &'static str,
    term: VectorTerm,
    return_type: DataType,
    dim: Option<usize>,
    sums: Vec<f64>,
    /// Rows (or total weight) per group.
    weights: Vec<f64>,
}

impl MeanVector {
    /// State for `function`, producing vectors of `return_type`.
    pub fn new(function: &'static str, term: VectorTerm, return_type: DataType) -> Self {
        let dim = crate::vector::fixed_len(&return_type);
        Self {
            function,
            term,
            return_type,
            dim,
            sums: Vec::new(),
            weights: Vec::new(),
        }
    }

    /// The partial-state fields: the float64 sum vector and the float64 row count (or total weight).
    pub fn state_fields(name: &str) -> Vec<FieldRef> {
        let item = Arc::new(Field::new_list_field(DataType::Float64, true));
        vec![
            Arc::new(Field::new(format_state_name(name, "sum"), DataType::List(item), true)),
            Arc::new(Field::new(format_state_name(name, "weight"), DataType::Float64, true)),
        ]
    }

    fn grow(&mut self, n: usize) {
        if self.weights.len() < n {
            self.weights.resize(n, 0.0);
        }
        if let Some(d) = self.dim {
            if self.sums.len() < n * d {
                self.sums.resize(n * d, 0.0);
            }
        }
    }

    /// Fixes the vector length on the first row seen; later rows must match.
    fn check_dim(&mut self, len: usize) -> Result<usize> {
        match self.dim {
            Some(d) if d != len => {
                exec_err!("{}: vectors have different lengths: {d} and {len}", self.function)
            }
            Some(d) => Ok(d),
            None => {
                self.dim = Some(len);
                self.sums.resize(self.weights.len() * len, 0.0);
                Ok(len)
            }
        }
    }

    /// Adds `w[i] · v[i]` to group `groups[i]`; a row with a NULL vector or weight is skipped, and a negative
    /// or non-finite weight is an error naming the function.
    fn update_weighted(
        &mut self,
        v: &ArrayRef,
        w: &Float64Array,
        groups: &[usize],
        filter: Option<&BooleanArray>,
    ) -> Result<()> {
        let function = self.function;
        let vectors = Vectors::try_new(function, v.as_ref())?;
        let mut scratch = Vec::new();
        for (i, &g) in groups.iter().enumerate() {
            if !passes(filter, i) || w.is_null(i) {
                continue;
            }
            let weight = w.value(i);
            if !(weight.is_finite() && weight >= 0.0) {
                return exec_err!("{function}: weight {weight} is negative or not finite: weights must be numbers ≥ 0");
            }
            let Some(x) = vectors.row(i, &mut scratch) else {
                continue;
            };
            let d = self.check_dim(x.len())?;
            for (o, &value) in self.sums[g * d..(g + 1) * d].iter_mut().zip(x) {
                *o += weight * value as f64;
            }
            self.weights[g] += weight;
        }
        Ok(())
    }
}

impl GroupState for MeanVector {
    fn update(&mut self, values: &[ArrayRef], groups: &[usize], filter: Option<&BooleanArray>, n: usize) -> Result<()> {
        self.grow(n);
        if groups.is_empty() {
            return Ok(());
        }
        let function = self.function;
        let (first, second) = match self.term {
            VectorTerm::Value => {
                let [v] = values else {
                    return exec_err!("{function} takes 1 argument, got {}", values.len());
                };
                (v, None)
            }
            VectorTerm::Difference => {
                let (a, b) = two_vector_args(function, values)?;
                (a, Some(b))
            }
            VectorTerm::Weighted => {
                let (v, w) = two_vector_args(function, values)?;
                let Some(w) = w.as_primitive_opt::<Float64Type>() else {
                    return exec_err!("{function}: the weight must be a float64 number, got {}", w.data_type());
                };
                return self.update_weighted(v, w, groups, filter);
            }
        };
        let va = Vectors::try_new(function, first.as_ref())?;
        let vb = second.map(|b| Vectors::try_new(function, b.as_ref())).transpose()?;
        let (mut sa, mut sb) = (Vec::new(), Vec::new());
        for (i, &g) in groups.iter().enumerate() {
            if !passes(filter, i) {
                continue;
            }
            let Some(x) = va.row(i, &mut sa) else { continue };
            match &vb {
                None => {
                    let d = self.check_dim(x.len())?;
                    diffsql_kernels::dense::add(&mut self.sums[g * d..(g + 1) * d], x);
                }
                Some(vb) => {
                    let Some(y) = vb.row(i, &mut sb) else { continue };
                    if x.len() != y.len() {
                        return va.length_mismatch(x.len(), y.len());
                    }
                    let d = self.check_dim(x.len())?;
                    diffsql_kernels::dense::add_diff(&mut self.sums[g * d..(g + 1) * d], x, y);
                }
            }
            self.weights[g] += 1.0;
        }
        Ok(())
    }

    fn merge(&mut self, states: &[ArrayRef], groups: &[usize], n: usize) -> Result<()> {
        self.grow(n);
        let [sums, weights] = states else {
            return exec_err!("{}: expected 2 state columns, got {}", self.function, states.len());
        };
        let sums = sums.as_list::<i32>();
        let weights = weights.as_primitive::<Float64Type>();
        for (i, &g) in groups.iter().enumerate() {
            if !weights.is_valid(i) || weights.value(i) == 0.0 {
                continue;
            }
            let part = sums.value(i);
            let part = part.as_primitive::<Float64Type>().values();
            let d = self.check_dim(part.len())?;
            for (o, p) in self.sums[g * d..(g + 1) * d].iter_mut().zip(part.iter()) {
                *o += p;
            }
            self.weights[g] += weights.value(i);
        }
        Ok(())
    }

    fn evaluate(&self, range: Range<usize>) -> Result<ArrayRef> {
        let mut out = VectorBuilder::new(range.len());
        for g in range {
            match (self.weights[g], self.dim) {
                (w, Some(d)) if w > 0.0 => {
                    out.push_with(|values| values.extend(self.sums[g * d..(g + 1) * d].iter().map(|s| (s / w) as f32)))
                }
                _ => out.push_null(),
            }
        }
        out.finish(&self.return_type)
    }

    fn state(&self, range: Range<usize>) -> Result<Vec<ArrayRef>> {
        let d = self.dim.unwrap_or(0);
        let groups = range.len();
        let sums = Float64Array::from(self.sums[range.start * d..range.end * d].to_vec());
        let item = Arc::new(Field::new_list_field(DataType::Float64, true));
        let lists = ListArray::try_new(
            item,
            OffsetBuffer::from_lengths(std::iter::repeat_n(d, groups)),
            Arc::new(sums),
            None,
        )?;
        Ok(vec![
            Arc::new(lists),
            Arc::new(Float64Array::from(self.weights[range].to_vec())),
        ])
    }

    fn drain(&mut self, n: usize) {
        self.weights.drain(..n);
        if let Some(d) = self.dim {
            self.sums.drain(..n * d);
        }
    }

    fn len(&self) -> usize {
        self.weights.len()
    }

    fn size(&self) -> usize {
        self.sums.capacity() * 8 + self.weights.capacity() * 8 + size_of::<Self>()
    }

    fn fresh(&self) -> Self {
        Self::new(self.function, self.term, self.return_type.clone())
    }
}

fn two_vector_args<'a>(function: &str, values: &'a [ArrayRef]) -> Result<(&'a ArrayRef, &'a ArrayRef)> {
    match values {
        [a, b] => Ok((a, b)),
        _ => exec_err!("{function} takes 2 arguments, got {}", values.len()),
    }
}
