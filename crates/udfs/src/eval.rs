//! Row loops shared by the scalar functions: borrow the arguments as vectors, check lengths, apply a kernel.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, FixedSizeListArray, Float32Array, Float64Array, Float64Builder, ListArray};
use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer};
use datafusion::arrow::datatypes::{DataType, Field, Fields};
use datafusion::common::{utils::take_function_args, Result};
use datafusion::logical_expr::ColumnarValue;

use crate::vector::{finish, float32_item, vector_arg, view};

/// Applies `kernel` to each row of one vector argument, giving a float64 column (null in, null out).
pub fn unary_f64(
    function: &str,
    args: &[ColumnarValue],
    kernel: impl Fn(&[f32]) -> Option<f64>,
) -> Result<ColumnarValue> {
    let [arg] = take_function_args(function, args)?;
    let arg = vector_arg(arg)?;
    let v = view(function, &arg)?;
    let mut out = Float64Builder::with_capacity(v.len());
    let mut scratch = Vec::new();
    for i in 0..v.len() {
        out.append_option(v.row(i, &mut scratch).and_then(&kernel));
    }
    finish(Arc::new(out.finish()), arg.1)
}

/// Applies `kernel` to each pair of rows of two vector arguments of equal length, giving a float64 column.
pub fn binary_f64(
    function: &str,
    args: &[ColumnarValue],
    rows: usize,
    kernel: impl Fn(&[f32], &[f32]) -> Option<f64>,
) -> Result<ColumnarValue> {
    let mut out: Vec<Option<f64>> = Vec::with_capacity(rows);
    let all_scalar = for_each_pair(function, args, rows, |pair| {
        out.push(pair.and_then(|(a, b)| kernel(a, b)));
        Ok(())
    })?;
    let out: Float64Array = out.into_iter().collect();
    finish(Arc::new(out), all_scalar)
}

/// The struct of named float64 fields that [`binary_f64_fields`] returns.
pub fn f64_struct_type(names: &[&str]) -> DataType {
    DataType::Struct(f64_fields(names))
}

fn f64_fields(names: &[&str]) -> Fields {
    names.iter().map(|n| Field::new(*n, DataType::Float64, true)).collect()
}

/// Applies `kernel` to each pair of rows, filling one float64 per named field: a struct column (NULL where
/// either vector is NULL).
pub fn binary_f64_fields<const N: usize>(
    function: &str,
    args: &[ColumnarValue],
    rows: usize,
    names: [&str; N],
    kernel: impl Fn(&[f32], &[f32]) -> [Option<f64>; N],
) -> Result<ColumnarValue> {
    let mut columns: Vec<Vec<Option<f64>>> = (0..N).map(|_| Vec::with_capacity(rows)).collect();
    let mut valid = Vec::with_capacity(rows);
    let all_scalar = for_each_pair(function, args, rows, |pair| {
        let values = pair.map(|(a, b)| kernel(a, b));
        valid.push(values.is_some());
        for (c, v) in columns.iter_mut().enumerate() {
            v.push(values.and_then(|vals| vals[c]));
        }
        Ok(())
    })?;
    let fields = f64_fields(&names);
    let arrays: Vec<ArrayRef> = columns
        .into_iter()
        .map(|c| Arc::new(Float64Array::from(c)) as ArrayRef)
        .collect();
    let nulls = valid.iter().any(|v| !v).then(|| NullBuffer::from(valid));
    let out = datafusion::arrow::array::StructArray::try_new(fields, arrays, nulls)?;
    finish(Arc::new(out), all_scalar)
}

/// Applies `kernel` to each pair of rows, giving float32 vectors of type `return_type`.
pub fn binary_vector(
    function: &str,
    args: &[ColumnarValue],
    rows: usize,
    return_type: &DataType,
    kernel: impl Fn(&[f32], &[f32], &mut Vec<f32>),
) -> Result<ColumnarValue> {
    let mut out = VectorBuilder::new(rows);
    let all_scalar = for_each_pair(function, args, rows, |pair| {
        match pair {
            Some((a, b)) => out.push_with(|values| kernel(a, b, values)),
            None => out.push_null(),
        }
        Ok(())
    })?;
    finish(out.finish(return_type)?, all_scalar)
}

/// Applies `kernel` to each row of one vector argument, giving float32 vectors of type `return_type`.
pub fn unary_vector(
    function: &str,
    args: &[ColumnarValue],
    return_type: &DataType,
    kernel: impl Fn(&[f32], &mut Vec<f32>),
) -> Result<ColumnarValue> {
    let [arg] = take_function_args(function, args)?;
    let arg = vector_arg(arg)?;
    let v = view(function, &arg)?;
    let mut out = VectorBuilder::new(v.len());
    let mut scratch = Vec::new();
    for i in 0..v.len() {
        match v.row(i, &mut scratch) {
            Some(row) => out.push_with(|values| kernel(row, values)),
            None => out.push_null(),
        }
    }
    finish(out.finish(return_type)?, arg.1)
}

/// Collects float32 vectors row by row into a `List` or `FixedSizeList` column.
pub struct VectorBuilder {
    values: Vec<f32>,
    lengths: Vec<usize>,
    valid: Vec<bool>,
}

impl VectorBuilder {
    /// A builder for about `rows` rows.
    pub fn new(rows: usize) -> Self {
        Self {
            values: Vec::new(),
            lengths: Vec::with_capacity(rows),
            valid: Vec::with_capacity(rows),
        }
    }

    /// Appends a row whose values `fill` pushes.
    pub fn push_with(&mut self, fill: impl FnOnce(&mut Vec<f32>)) {
        let before = self.values.len();
        fill(&mut self.values);
        self.lengths.push(self.values.len() - before);
        self.valid.push(true);
    }

    /// Appends a null row.
    pub fn push_null(&mut self) {
        self.lengths.push(0);
        self.valid.push(false);
    }

    /// Builds the column; `return_type` chooses `FixedSizeList` (null rows padded) or `List`.
    pub fn finish(self, return_type: &DataType) -> Result<ArrayRef> {
        let nulls = self.valid.iter().any(|v| !v).then(|| NullBuffer::from(self.valid));
        let values = Arc::new(Float32Array::from(self.values));
        Ok(match return_type {
            DataType::FixedSizeList(_, n) => {
                let values = pad_null_rows(values, &self.lengths, *n as usize);
                Arc::new(FixedSizeListArray::try_new(float32_item(), *n, values, nulls)?)
            }
            _ => Arc::new(ListArray::try_new(
                float32_item(),
                OffsetBuffer::from_lengths(self.lengths),
                values,
                nulls,
            )?),
        })
    }
}

/// Null rows of a fixed-size list still occupy n slots: fill them with zeros.
fn pad_null_rows(values: Arc<Float32Array>, lengths: &[usize], n: usize) -> ArrayRef {
    if lengths.iter().all(|&l| l == n) {
        return values;
    }
    let mut padded = Vec::with_capacity(lengths.len() * n);
    let mut offset = 0;
    for &l in lengths {
        if l == n {
            padded.extend_from_slice(&values.values()[offset..offset + n]);
        } else {
            padded.extend(std::iter::repeat_n(0.0f32, n));
        }
        offset += l;
    }
    Arc::new(Float32Array::from(padded))
}

/// Calls `visit` with each pair of rows (`None` when either is null) after checking their lengths.
/// Returns whether both arguments were scalars.
fn for_each_pair(
    function: &str,
    args: &[ColumnarValue],
    rows: usize,
    mut visit: impl FnMut(Option<(&[f32], &[f32])>) -> Result<()>,
) -> Result<bool> {
    let [a, b] = take_function_args(function, args)?;
    let (a, b) = (vector_arg(a)?, vector_arg(b)?);
    let (va, vb) = (view(function, &a)?, view(function, &b)?);
    let all_scalar = a.1 && b.1;
    let rows = if all_scalar { 1 } else { rows };
    let (mut sa, mut sb) = (Vec::new(), Vec::new());
    for i in 0..rows {
        match (va.row(i, &mut sa), vb.row(i, &mut sb)) {
            (Some(x), Some(y)) => {
                if x.len() != y.len() {
                    return va.length_mismatch(x.len(), y.len());
                }
                visit(Some((x, y)))?
            }
            _ => visit(None)?,
        }
    }
    Ok(all_scalar)
}

/// The `coerce_types` of every two-vector function: both arguments vectors, fixed lengths equal.
pub fn coerce_two_vectors(function: &str, arg_types: &[DataType]) -> Result<Vec<DataType>> {
    let [a, b] = take_function_args(function, arg_types)?;
    let a = crate::vector::coerce_vector_arg(function, 1, a)?;
    let b = crate::vector::coerce_vector_arg(function, 2, b)?;
    crate::vector::check_same_fixed_len(function, &a, &b)?;
    Ok(vec![a, b])
}

/// The `coerce_types` of every one-vector function.
pub fn coerce_one_vector(function: &str, arg_types: &[DataType]) -> Result<Vec<DataType>> {
    let [a] = take_function_args(function, arg_types)?;
    Ok(vec![crate::vector::coerce_vector_arg(function, 1, a)?])
}
