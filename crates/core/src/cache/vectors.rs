//! How activation vectors are stored in Parquet and shown to SQL.
//!
//! On disk a vector is one `FIXED_LEN_BYTE_ARRAY` value (d × element width bytes, little-endian), which
//! Parquet decodes several times faster than a list column (no repetition levels). The Arrow field carries
//! `diffsql.dtype` and `diffsql.d_model` metadata so any reader knows how to view the bytes. In SQL the
//! column is a `FixedSizeList` of `Float32`, `Float16` or `UInt16` (bfloat16 bits), made from the same
//! buffer without copying.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use datafusion::arrow::array::{
    Array, ArrayRef, FixedSizeBinaryArray, FixedSizeListArray, Float16Array, Float32Array, UInt16Array,
};
use datafusion::arrow::buffer::{Buffer, ScalarBuffer};
use datafusion::arrow::datatypes::{ArrowPrimitiveType, DataType, Field, Float16Type, Float32Type, UInt16Type};
use diffsql_udfs::vector::{bf16_bits_to_f32, encode_le_bytes, float32_item, ElementType};

/// Field metadata key holding the element encoding.
pub const DTYPE_KEY: &str = "diffsql.dtype";
/// Field metadata key holding the vector length.
pub const D_MODEL_KEY: &str = "diffsql.d_model";

/// The storage encoding of one vector column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct VectorEncoding {
    pub dtype: ElementType,
    pub d_model: usize,
}

impl VectorEncoding {
    /// An encoding of `d_model` elements of `dtype`.
    pub fn new(dtype: ElementType, d_model: usize) -> Self {
        Self { dtype, d_model }
    }

    /// Bytes per stored vector.
    pub fn byte_width(&self) -> usize {
        self.d_model * self.dtype.width()
    }

    /// The Parquet/Arrow field the vectors are stored in.
    pub fn storage_field(&self, name: &str) -> Field {
        let metadata = HashMap::from([
            (DTYPE_KEY.to_string(), self.dtype.name().to_string()),
            (D_MODEL_KEY.to_string(), self.d_model.to_string()),
        ]);
        Field::new(name, DataType::FixedSizeBinary(self.byte_width() as i32), false).with_metadata(metadata)
    }

    /// Reads the encoding back from a stored field.
    pub fn from_field(field: &Field) -> Result<Self> {
        let meta = field.metadata();
        let dtype = meta
            .get(DTYPE_KEY)
            .and_then(|d| ElementType::parse(d))
            .ok_or_else(|| anyhow!("column {} has no valid {DTYPE_KEY} metadata", field.name()))?;
        let d_model: usize = meta
            .get(D_MODEL_KEY)
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| anyhow!("column {} has no valid {D_MODEL_KEY} metadata", field.name()))?;
        Ok(Self { dtype, d_model })
    }

    /// The SQL type of the column: a fixed-size list of the stored element type.
    pub fn sql_type(&self) -> DataType {
        DataType::FixedSizeList(
            Arc::new(Field::new_list_field(self.dtype.arrow_type(), true)),
            self.d_model as i32,
        )
    }

    /// Encodes `values` (rows × d_model, row-major) for storage, rounding to the stored precision.
    pub fn encode(&self, values: &[f32]) -> Result<FixedSizeBinaryArray> {
        if !values.len().is_multiple_of(self.d_model) {
            bail!(
                "{} values are not a whole number of vectors of length {}",
                values.len(),
                self.d_model
            );
        }
        let bytes = encode_le_bytes(self.dtype, values);
        Ok(FixedSizeBinaryArray::new(
            self.byte_width() as i32,
            Buffer::from(bytes),
            None,
        ))
    }

    /// Views stored vectors as the SQL type ([`Self::sql_type`]); no copy unless the buffer is misaligned.
    pub fn decode(&self, stored: &FixedSizeBinaryArray) -> Result<ArrayRef> {
        if stored.value_length() as usize != self.byte_width() {
            bail!(
                "stored vectors are {} bytes, expected {} ({} × {})",
                stored.value_length(),
                self.byte_width(),
                self.d_model,
                self.dtype.name()
            );
        }
        let n = stored.len() * self.d_model;
        let values: ArrayRef = match self.dtype {
            ElementType::Float32 => Arc::new(Float32Array::new(
                scalar_buffer::<Float32Type>(stored.values(), n),
                None,
            )),
            ElementType::Float16 => Arc::new(Float16Array::new(
                scalar_buffer::<Float16Type>(stored.values(), n),
                None,
            )),
            ElementType::BFloat16 => Arc::new(UInt16Array::new(scalar_buffer::<UInt16Type>(stored.values(), n), None)),
        };
        let item = Arc::new(Field::new_list_field(self.dtype.arrow_type(), true));
        Ok(Arc::new(FixedSizeListArray::try_new(
            item,
            self.d_model as i32,
            values,
            stored.nulls().cloned(),
        )?))
    }

    /// Decodes stored vectors to a `List<Float32>`, the common type when a table mixes encodings.
    pub fn decode_to_f32_list(&self, stored: &FixedSizeBinaryArray) -> Result<ArrayRef> {
        let fixed = self.decode(stored)?;
        let fixed = fixed
            .as_any()
            .downcast_ref::<FixedSizeListArray>()
            .expect("decode gives a fixed-size list");
        let values: Vec<f32> = match self.dtype {
            ElementType::Float32 => fixed
                .values()
                .as_any()
                .downcast_ref::<Float32Array>()
                .unwrap()
                .values()
                .to_vec(),
            ElementType::Float16 => {
                let v = fixed.values().as_any().downcast_ref::<Float16Array>().unwrap();
                v.values().iter().map(|x| x.to_f32()).collect()
            }
            ElementType::BFloat16 => {
                let v = fixed.values().as_any().downcast_ref::<UInt16Array>().unwrap();
                v.values().iter().map(|&b| bf16_bits_to_f32(b)).collect()
            }
        };
        let offsets =
            datafusion::arrow::buffer::OffsetBuffer::from_lengths(std::iter::repeat_n(self.d_model, stored.len()));
        Ok(Arc::new(datafusion::arrow::array::ListArray::try_new(
            float32_item(),
            offsets,
            Arc::new(Float32Array::from(values)),
            stored.nulls().cloned(),
        )?))
    }
}

/// Reinterprets little-endian bytes as `n` values of `T`, copying only if the buffer is misaligned.
fn scalar_buffer<T: ArrowPrimitiveType>(bytes: &Buffer, n: usize) -> ScalarBuffer<T::Native> {
    let bytes = bytes.slice_with_length(0, n * size_of::<T::Native>());
    if bytes.as_ptr().align_offset(align_of::<T::Native>()) == 0 {
        ScalarBuffer::from(bytes)
    } else {
        let copied = Buffer::from_slice_ref(bytes.as_slice());
        ScalarBuffer::from(copied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::AsArray;

    #[test]
    fn round_trip_each_dtype_through_storage() {
        let values = [1.0f32, -2.0, 0.5, 3.25, 0.0, -0.125];
        for dtype in [ElementType::Float32, ElementType::Float16, ElementType::BFloat16] {
            let enc = VectorEncoding::new(dtype, 3);
            let stored = enc.encode(&values).unwrap();
            assert_eq!(stored.len(), 2);
            let back = VectorEncoding::from_field(&enc.storage_field("act")).unwrap();
            assert_eq!(back, enc);
            let list = enc.decode_to_f32_list(&stored).unwrap();
            let got = list
                .as_list::<i32>()
                .values()
                .as_primitive::<Float32Type>()
                .values()
                .to_vec();
            assert_eq!(got, values, "{dtype:?}");
            assert_eq!(enc.decode(&stored).unwrap().data_type(), &enc.sql_type());
        }
    }

    #[test]
    fn misaligned_slices_are_copied_not_rejected() {
        let enc = VectorEncoding::new(ElementType::Float32, 1);
        let stored = enc.encode(&[1.0, 2.0, 3.0]).unwrap();
        let raw = Buffer::from_slice_ref([0u8; 1])
            .as_slice()
            .iter()
            .chain(stored.value_data())
            .copied()
            .collect::<Vec<u8>>();
        let shifted = Buffer::from(raw).slice(1);
        let misaligned = FixedSizeBinaryArray::new(4, shifted, None);
        let got = enc.decode(&misaligned).unwrap();
        assert_eq!(
            got.as_fixed_size_list()
                .values()
                .as_primitive::<Float32Type>()
                .values()
                .to_vec(),
            vec![1.0, 2.0, 3.0]
        );
    }
}
