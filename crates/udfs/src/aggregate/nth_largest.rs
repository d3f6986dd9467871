//! `nth_largest(value, n)`: the exact n-th largest value of a group, with a bounded heap of n values instead of
//! a sort of the whole group; `WHERE value >= nth_largest(...)` then keeps only top-n candidates to rank.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array, ListArray, RecordBatch};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type, Schema};
use datafusion::common::{exec_err, plan_err, Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDFImpl, ColumnarValue, Documentation, Signature, Volatility};
use datafusion::physical_expr::PhysicalExpr;

use crate::doc::VECTOR_AGGREGATES;

/// The n-th largest value of a group (NULL when the group has fewer than n non-NULL values).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct NthLargest {
    signature: Signature,
}

impl Default for NthLargest {
    fn default() -> Self {
        Self {
            signature: Signature::exact(vec![DataType::Float64, DataType::Int64], Volatility::Immutable),
        }
    }
}

static DOC: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        VECTOR_AGGREGATES,
        "The exact n-th largest value of a group, kept with a heap of n values (no sort of the group); NULL \
         when the group has fewer than n non-NULL values. Use it to rank only the top candidates.",
        "nth_largest(value, n)",
    )
    .with_sql_example(
        r#"```sql
> SELECT layer, nth_largest(diff_norm(base, ft), 100) FROM acts GROUP BY layer;
```"#,
    )
    .with_argument("value", "A number (cast to float64).")
    .with_argument("n", "A positive integer literal, at most 10,000,000.")
    .build()
});

/// The largest n accepted: the heap holds up to n values per group (16 bytes each).
pub const MAX_N: i64 = 10_000_000;

fn literal_n(expr: &Arc<dyn PhysicalExpr>) -> Result<usize> {
    let empty = RecordBatch::new_empty(Arc::new(Schema::empty()));
    match expr.evaluate(&empty) {
        Ok(ColumnarValue::Scalar(ScalarValue::Int64(Some(n)))) if n > MAX_N => {
            plan_err!("nth_largest(value, n): n is at most {MAX_N} (got {n}); rank fewer candidates")
        }
        Ok(ColumnarValue::Scalar(ScalarValue::Int64(Some(n)))) if n > 0 => Ok(n as usize),
        _ => plan_err!("nth_largest(value, n): n must be a positive integer literal"),
    }
}

/// The n largest values seen so far (a min-heap of at most n).
#[derive(Debug)]
struct Largest {
    n: usize,
    heap: BinaryHeap<Reverse<OrderedF64>>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct OrderedF64(f64);

impl Eq for OrderedF64 {}

impl PartialOrd for OrderedF64 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrderedF64 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl Largest {
    fn push(&mut self, v: f64) {
        if v.is_nan() {
            return;
        }
        if self.heap.len() < self.n {
            self.heap.push(Reverse(OrderedF64(v)));
        } else if let Some(Reverse(min)) = self.heap.peek() {
            if v > min.0 {
                self.heap.pop();
                self.heap.push(Reverse(OrderedF64(v)));
            }
        }
    }

    fn push_all(&mut self, values: &Float64Array) {
        for v in values.iter().flatten() {
            self.push(v);
        }
    }
}

impl Accumulator for Largest {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.push_all(values[0].as_primitive::<Float64Type>());
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Float64(if self.heap.len() == self.n {
            self.heap.peek().map(|Reverse(v)| v.0)
        } else {
            None
        }))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.heap.capacity() * std::mem::size_of::<f64>()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let values: Vec<f64> = self.heap.iter().map(|Reverse(v)| v.0).collect();
        let list = ListArray::new(
            Arc::new(Field::new_list_field(DataType::Float64, true)),
            OffsetBuffer::from_lengths([values.len()]),
            Arc::new(Float64Array::from(values)),
            None,
        );
        Ok(vec![ScalarValue::List(Arc::new(list))])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let Some(lists) = states[0].as_list_opt::<i32>() else {
            return exec_err!("nth_largest: unexpected partial state {}", states[0].data_type());
        };
        for i in 0..lists.len() {
            if lists.is_valid(i) {
                self.push_all(lists.value(i).as_primitive::<Float64Type>());
            }
        }
        Ok(())
    }
}

impl AggregateUDFImpl for NthLargest {
    fn name(&self) -> &str {
        "nth_largest"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let n = literal_n(&args.exprs[1])?;
        Ok(Box::new(Largest {
            n,
            heap: BinaryHeap::with_capacity((n + 1).min(4096)),
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format!("{}[largest]", args.name),
            DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true))),
            true,
        ))])
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn largest(n: usize) -> Largest {
        Largest {
            n,
            heap: BinaryHeap::new(),
        }
    }

    #[test]
    fn exact_nth_largest_with_ties_nulls_and_merging() {
        let values: ArrayRef = Arc::new(Float64Array::from(vec![
            Some(3.0),
            None,
            Some(9.0),
            Some(1.0),
            Some(9.0),
            Some(f64::NAN),
            Some(5.0),
        ]));
        let mut acc = largest(3);
        acc.update_batch(&[Arc::clone(&values)]).unwrap();
        // 9, 9, 5: the third largest is 5.
        assert_eq!(acc.evaluate().unwrap(), ScalarValue::Float64(Some(5.0)));
        // Fewer values than n: NULL.
        let mut few = largest(10);
        few.update_batch(&[Arc::clone(&values)]).unwrap();
        assert_eq!(few.evaluate().unwrap(), ScalarValue::Float64(None));
        // Split over two partial accumulators and merged: the same answer.
        let (mut a, mut b) = (largest(3), largest(3));
        a.update_batch(&[values.slice(0, 3)]).unwrap();
        b.update_batch(&[values.slice(3, 4)]).unwrap();
        let mut merged = largest(3);
        for part in [&mut a, &mut b] {
            let state = part.state().unwrap()[0].to_array().unwrap();
            merged.merge_batch(&[state]).unwrap();
        }
        assert_eq!(merged.evaluate().unwrap(), ScalarValue::Float64(Some(5.0)));
    }
}
