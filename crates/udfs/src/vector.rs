//! Reads a column of activation vectors in any encoding diffsql accepts, so kernels only ever see `&[f32]`.
//!
//! A vector is a `List`, `LargeList` or `FixedSizeList` whose elements are `Float32`, `Float16` or
//! bfloat16. Arrow has no bfloat16 type: diffsql stores it as `UInt16` holding the raw bf16 bits (the top
//! half of an IEEE float32), so a list of `UInt16` is always read as bfloat16. Other numeric element types
//! (`Float64`, integers: what SQL literals such as `[1.0, 0.0]` produce) are coerced to `Float32` at
//! planning time by [`coerce_vector_arg`].

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, FixedSizeListArray, GenericListArray, OffsetSizeTrait};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{DataType, Field, Float16Type, Float32Type, UInt16Type};
use datafusion::common::{exec_err, plan_err, Result, ScalarValue};
use datafusion::logical_expr::ColumnarValue;
use half::f16;

/// The element encodings a vector column may have (also the dtype settings name: `float32`/`f32`,
/// `float16`/`f16`, `bfloat16`/`bf16`; read and written through [`ElementType::parse`] and
/// [`ElementType::name`], the one table of names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum ElementType {
    Float32,
    Float16,
    /// Raw bfloat16 bits stored in `UInt16`.
    BFloat16,
}

impl TryFrom<String> for ElementType {
    type Error = String;

    fn try_from(s: String) -> std::result::Result<Self, String> {
        Self::parse(&s).ok_or_else(|| format!("unknown dtype {s:?}: use float32, float16 or bfloat16"))
    }
}

impl From<ElementType> for &'static str {
    fn from(e: ElementType) -> Self {
        e.name()
    }
}

impl ElementType {
    /// The element type an Arrow element type stands for, if it is one diffsql reads without coercion.
    pub fn from_arrow(data_type: &DataType) -> Option<Self> {
        match data_type {
            DataType::Float32 => Some(Self::Float32),
            DataType::Float16 => Some(Self::Float16),
            DataType::UInt16 => Some(Self::BFloat16),
            _ => None,
        }
    }

    /// The Arrow type that holds elements of this encoding.
    pub fn arrow_type(self) -> DataType {
        match self {
            Self::Float32 => DataType::Float32,
            Self::Float16 => DataType::Float16,
            Self::BFloat16 => DataType::UInt16,
        }
    }

    /// Bytes per element.
    pub fn width(self) -> usize {
        match self {
            Self::Float32 => 4,
            Self::Float16 | Self::BFloat16 => 2,
        }
    }

    /// The name used in settings, manifests and messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Float32 => "float32",
            Self::Float16 => "float16",
            Self::BFloat16 => "bfloat16",
        }
    }

    /// Parses a settings name (`float32`/`f32`, `float16`/`f16`, `bfloat16`/`bf16`).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "float32" | "f32" => Some(Self::Float32),
            "float16" | "f16" => Some(Self::Float16),
            "bfloat16" | "bf16" => Some(Self::BFloat16),
            _ => None,
        }
    }
}

/// A list field holding float32 elements, the type of every vector a diffsql function returns.
pub fn float32_item() -> Arc<Field> {
    Arc::new(Field::new_list_field(DataType::Float32, true))
}

/// Decides what a function argument that should be a vector is coerced to, or says why it cannot be one.
///
/// `position` counts from 1, as in the error message.
pub fn coerce_vector_arg(function: &str, position: usize, arg: &DataType) -> Result<DataType> {
    let element = match arg {
        DataType::Null => return Ok(DataType::Null),
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => f.data_type(),
        other => {
            return plan_err!(
                "{function}: argument {position} must be a vector (a list of float32, float16 or bfloat16 values), got {other}"
            )
        }
    };
    if ElementType::from_arrow(element).is_some() {
        return Ok(arg.clone());
    }
    if !(element.is_numeric() || element == &DataType::Null) {
        return plan_err!("{function}: argument {position} must be a vector of numbers, got a list of {element}");
    }
    Ok(match arg {
        DataType::List(_) => DataType::List(float32_item()),
        DataType::LargeList(_) => DataType::LargeList(float32_item()),
        DataType::FixedSizeList(_, n) => DataType::FixedSizeList(float32_item(), *n),
        _ => unreachable!("checked above"),
    })
}

/// The vector length a type fixes at planning time, if it is a `FixedSizeList`.
pub fn fixed_len(arg: &DataType) -> Option<usize> {
    match arg {
        DataType::FixedSizeList(_, n) => Some(*n as usize),
        _ => None,
    }
}

/// Checks at planning time that two fixed-size vector arguments have the same length.
pub fn check_same_fixed_len(function: &str, a: &DataType, b: &DataType) -> Result<()> {
    match (fixed_len(a), fixed_len(b)) {
        (Some(x), Some(y)) if x != y => {
            plan_err!("{function}: vectors have different lengths: {x} and {y}")
        }
        _ => Ok(()),
    }
}

/// The type of a vector a function returns, given the types of its vector arguments: a
/// `FixedSizeList<Float32>` when every argument fixes the same length, else a `List<Float32>`.
pub fn float32_vector_type(args: &[DataType]) -> DataType {
    let lens: Vec<Option<usize>> = args.iter().map(fixed_len).collect();
    match lens.first() {
        Some(Some(n)) if lens.iter().all(|l| *l == Some(*n)) => DataType::FixedSizeList(float32_item(), *n as i32),
        _ => DataType::List(float32_item()),
    }
}

#[derive(Debug, Clone, Copy)]
enum Elements<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Bf16(&'a [u16]),
    /// A `Null`-typed column: every row is null.
    None,
}

#[derive(Debug, Clone, Copy)]
enum Layout<'a> {
    Fixed(usize),
    Offsets32(&'a [i32]),
    Offsets64(&'a [i64]),
}

/// A column of vectors, borrowed from an Arrow array, with per-row access decoded to f32.
#[derive(Debug)]
pub struct Vectors<'a> {
    function: &'a str,
    elements: Elements<'a>,
    layout: Layout<'a>,
    nulls: Option<&'a NullBuffer>,
    element_nulls: Option<&'a NullBuffer>,
    len: usize,
    /// A scalar argument: every row reads row 0.
    broadcast: bool,
}

impl<'a> Vectors<'a> {
    /// Borrows `array` as vectors; `function` names the caller in errors.
    pub fn try_new(function: &'a str, array: &'a dyn Array) -> Result<Self> {
        let len = array.len();
        let (values, layout) = match array.data_type() {
            DataType::Null => {
                return Ok(Self {
                    function,
                    elements: Elements::None,
                    layout: Layout::Fixed(0),
                    nulls: None,
                    element_nulls: None,
                    len,
                    broadcast: false,
                })
            }
            DataType::List(_) => list_parts::<i32>(array.as_list::<i32>(), Layout::Offsets32),
            DataType::LargeList(_) => list_parts::<i64>(array.as_list::<i64>(), Layout::Offsets64),
            DataType::FixedSizeList(_, n) => {
                let list: &FixedSizeListArray = array.as_fixed_size_list();
                (list.values(), Layout::Fixed(*n as usize))
            }
            other => return exec_err!("{function}: expected a vector, got {other}"),
        };
        let elements = match values.data_type() {
            DataType::Float32 => Elements::F32(values.as_primitive::<Float32Type>().values().as_ref()),
            DataType::Float16 => Elements::F16(values.as_primitive::<Float16Type>().values().as_ref()),
            DataType::UInt16 => Elements::Bf16(values.as_primitive::<UInt16Type>().values().as_ref()),
            DataType::Null => Elements::None,
            other => {
                return exec_err!(
                    "{function}: vector elements must be float32, float16 or bfloat16 (uint16), got {other}"
                )
            }
        };
        Ok(Self {
            function,
            elements,
            layout,
            nulls: array.nulls(),
            element_nulls: values.nulls().filter(|n| n.null_count() > 0),
            len,
            broadcast: false,
        })
    }

    /// Marks this column as a scalar argument, repeated for every row.
    pub fn broadcast(mut self) -> Self {
        self.broadcast = true;
        self
    }

    /// Number of rows (1 for a scalar argument).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The element range of row `i`, or `None` when the row is null or holds a null element.
    fn range(&self, i: usize) -> Option<(usize, usize)> {
        let i = if self.broadcast { 0 } else { i };
        if matches!(self.elements, Elements::None) || self.nulls.is_some_and(|n| n.is_null(i)) {
            return None;
        }
        let (start, end) = match self.layout {
            Layout::Fixed(n) => (i * n, (i + 1) * n),
            Layout::Offsets32(o) => (o[i] as usize, o[i + 1] as usize),
            Layout::Offsets64(o) => (o[i] as usize, o[i + 1] as usize),
        };
        if let Some(en) = self.element_nulls {
            if (start..end).any(|j| en.is_null(j)) {
                return None;
            }
        }
        Some((start, end))
    }

    /// Row `i` as f32 values, decoding float16 and bfloat16 into `scratch`; `None` for a null row.
    pub fn row<'s>(&'s self, i: usize, scratch: &'s mut Vec<f32>) -> Option<&'s [f32]> {
        let (start, end) = self.range(i)?;
        match self.elements {
            Elements::F32(v) => Some(&v[start..end]),
            Elements::F16(v) => {
                scratch.clear();
                scratch.extend(v[start..end].iter().map(|x| x.to_f32()));
                Some(scratch.as_slice())
            }
            Elements::Bf16(v) => {
                scratch.clear();
                scratch.extend(v[start..end].iter().map(|&bits| bf16_bits_to_f32(bits)));
                Some(scratch.as_slice())
            }
            Elements::None => None,
        }
    }

    /// Error for two vectors of different lengths, naming the function and both lengths.
    pub fn length_mismatch<T>(&self, a: usize, b: usize) -> Result<T> {
        exec_err!("{}: vectors have different lengths: {a} and {b}", self.function)
    }
}

fn list_parts<'a, O: OffsetSizeTrait>(
    list: &'a GenericListArray<O>,
    layout: fn(&'a [O]) -> Layout<'a>,
) -> (&'a ArrayRef, Layout<'a>) {
    (list.values(), layout(list.value_offsets()))
}

/// Decodes one bfloat16 value from its raw bits.
#[inline]
pub fn bf16_bits_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// Encodes an f32 as bfloat16 bits, rounding to nearest even (NaN stays NaN).
#[inline]
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

/// Encodes f32 values as little-endian bytes of `dtype` (bfloat16 rounded to nearest even), the storage
/// form of a cache's vectors. Compiled here, with the kernels, so it runs optimised in every build.
pub fn encode_le_bytes(dtype: ElementType, values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * dtype.width());
    match dtype {
        ElementType::Float32 => {
            for x in values {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        ElementType::Float16 => {
            for &x in values {
                out.extend_from_slice(&f16::from_f32(x).to_le_bytes());
            }
        }
        ElementType::BFloat16 => {
            for &x in values {
                out.extend_from_slice(&f32_to_bf16_bits(x).to_le_bytes());
            }
        }
    }
    out
}

/// Appends little-endian stored values of `dtype` to `out` as f32 (the inverse of [`encode_le_bytes`]).
pub fn decode_le_bytes(dtype: ElementType, bytes: &[u8], out: &mut Vec<f32>) {
    match dtype {
        ElementType::Float32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        ElementType::Float16 => out.extend(bytes.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())),
        ElementType::BFloat16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| bf16_bits_to_f32(u16::from_le_bytes([c[0], c[1]]))),
        ),
    }
}

/// Adds `amount` to coordinate `coord` of every row of a row-major matrix with rows of length `d`.
pub fn add_to_coordinate(values: &mut [f32], d: usize, coord: usize, amount: f32) {
    for row in values.chunks_exact_mut(d) {
        row[coord] += amount;
    }
}

/// One function argument as a vector column: arrays are borrowed as they are, scalars as a single row
/// that every row of the batch reads.
pub fn vector_arg(value: &ColumnarValue) -> Result<(ArrayRef, bool)> {
    match value {
        ColumnarValue::Array(a) => Ok((Arc::clone(a), false)),
        ColumnarValue::Scalar(s) => Ok((s.to_array_of_size(1)?, true)),
    }
}

/// Borrows an argument prepared by [`vector_arg`].
pub fn view<'a>(function: &'a str, arg: &'a (ArrayRef, bool)) -> Result<Vectors<'a>> {
    let v = Vectors::try_new(function, arg.0.as_ref())?;
    Ok(if arg.1 { v.broadcast() } else { v })
}

/// Turns a result computed over `rows` rows back into a scalar when every argument was a scalar.
pub fn finish(result: ArrayRef, all_scalar: bool) -> Result<ColumnarValue> {
    if all_scalar {
        Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&result, 0)?))
    } else {
        Ok(ColumnarValue::Array(result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float32Array, ListArray, UInt16Array};
    use datafusion::arrow::buffer::OffsetBuffer;

    #[test]
    fn bf16_round_trip_is_exact_for_representable_values() {
        for x in [0.0f32, 1.0, -2.5, 0.15625, 3.0e38, -1.0e-30] {
            let back = bf16_bits_to_f32(f32_to_bf16_bits(x));
            assert!((back - x).abs() <= x.abs() * 2f32.powi(-8), "{x} -> {back}");
        }
        assert_eq!(bf16_bits_to_f32(f32_to_bf16_bits(1.5)), 1.5);
    }

    #[test]
    fn reads_rows_of_each_layout() {
        let values = Arc::new(Float32Array::from(vec![1.0, 2.0, 3.0, 4.0, 5.0]));
        let list = ListArray::new(
            Arc::new(Field::new_list_field(DataType::Float32, true)),
            OffsetBuffer::from_lengths([2, 3]),
            values,
            None,
        );
        let v = Vectors::try_new("t", &list).unwrap();
        let mut s = Vec::new();
        assert_eq!(v.row(1, &mut s).unwrap(), &[3.0, 4.0, 5.0]);

        let bits = UInt16Array::from(vec![f32_to_bf16_bits(1.0), f32_to_bf16_bits(-0.5)]);
        let fixed = FixedSizeListArray::new(
            Arc::new(Field::new_list_field(DataType::UInt16, true)),
            1,
            Arc::new(bits),
            Some(NullBuffer::from(vec![true, false])),
        );
        let v = Vectors::try_new("t", &fixed).unwrap();
        assert_eq!(v.row(0, &mut s).unwrap(), &[1.0]);
        assert!(v.row(1, &mut s).is_none());
    }

    #[test]
    fn coercion_rejects_non_vectors_and_names_the_function() {
        let err = coerce_vector_arg("vec_norm", 1, &DataType::Utf8).unwrap_err();
        assert!(err.to_string().contains("vec_norm: argument 1"), "{err}");
        let f64_list = DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true)));
        assert_eq!(
            coerce_vector_arg("f", 1, &f64_list).unwrap(),
            DataType::List(float32_item())
        );
    }
}
