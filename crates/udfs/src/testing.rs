//! Helpers for the in-module tests: build vector columns and call a function on them directly.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, Float16Array, Float32Array, ListArray, UInt16Array,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, Float64Type};
use datafusion::common::config::ConfigOptions;
use datafusion::common::Result;
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF};

use crate::vector::f32_to_bf16_bits;

/// A `List<Float32>` column; `None` rows are null.
pub fn f32_list(rows: &[Option<&[f32]>]) -> ArrayRef {
    let lengths = rows.iter().map(|r| r.map_or(0, |v| v.len()));
    let values: Vec<f32> = rows.iter().flatten().flat_map(|v| v.iter().copied()).collect();
    let nulls = rows.iter().map(|r| r.is_some()).collect::<Vec<_>>();
    Arc::new(ListArray::new(
        Arc::new(Field::new_list_field(DataType::Float32, true)),
        OffsetBuffer::from_lengths(lengths),
        Arc::new(Float32Array::from(values)),
        Some(nulls.into()),
    ))
}

fn fixed(rows: &[&[f32]], values: ArrayRef) -> ArrayRef {
    let n = rows.first().map_or(0, |r| r.len()) as i32;
    let field = Arc::new(Field::new_list_field(values.data_type().clone(), true));
    Arc::new(FixedSizeListArray::new(field, n, values, None))
}

/// A `FixedSizeList<UInt16>` column of bfloat16 bits.
pub fn fixed_bf16(rows: &[&[f32]]) -> ArrayRef {
    let bits: UInt16Array = rows
        .iter()
        .flat_map(|r| r.iter().map(|&x| f32_to_bf16_bits(x)))
        .collect();
    fixed(rows, Arc::new(bits))
}

/// A `FixedSizeList<Float16>` column.
pub fn fixed_f16(rows: &[&[f32]]) -> ArrayRef {
    let v: Float16Array = rows
        .iter()
        .flat_map(|r| r.iter().map(|&x| half::f16::from_f32(x)))
        .collect();
    fixed(rows, Arc::new(v))
}

/// A `FixedSizeList<Float32>` column.
pub fn fixed_f32(rows: &[&[f32]]) -> ArrayRef {
    let v: Float32Array = rows.iter().flat_map(|r| r.iter().copied()).collect();
    fixed(rows, Arc::new(v))
}

/// Calls `udf` on array arguments, as DataFusion would after coercion.
pub fn eval(udf: &ScalarUDF, args: Vec<ArrayRef>) -> Result<ArrayRef> {
    let types: Vec<DataType> = args.iter().map(|a| a.data_type().clone()).collect();
    let rows = args[0].len();
    let arg_fields = types
        .iter()
        .map(|t| Arc::new(Field::new("a", t.clone(), true)))
        .collect();
    let return_type = udf.return_type(&types)?;
    let out = udf.invoke_with_args(ScalarFunctionArgs {
        args: args.into_iter().map(ColumnarValue::Array).collect(),
        arg_fields,
        number_rows: rows,
        return_field: Arc::new(Field::new("out", return_type, true)),
        config_options: Arc::new(ConfigOptions::default()),
    })?;
    out.into_array(rows)
}

/// Calls `udf` and reads a float64 result.
pub fn eval_f64(udf: &ScalarUDF, args: Vec<ArrayRef>) -> Vec<Option<f64>> {
    let out = eval(udf, args).unwrap();
    out.as_primitive::<Float64Type>().iter().collect()
}
