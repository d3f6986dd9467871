//! Property-based fuzzing of every diffsql function through SQL: vectors of random lengths (equal or not),
//! element types (float32, float16, bfloat16 bits, float64 lists), NULL rows, NaN and ±inf, empty tables,
//! and size arguments from 0 to i64::MAX. Whatever the input, a function returns a value or a one-line
//! error that names it; it never panics.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, FixedSizeListArray, Float16Array, Float32Array, Float64Array, ListArray, RecordBatch, UInt16Array,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use proptest::prelude::*;

/// One element value: ordinary, or one of the values that break naive arithmetic.
fn element() -> impl Strategy<Value = f32> {
    prop_oneof![
        6 => -4.0f32..4.0,
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
        1 => Just(0.0f32),
        1 => Just(f32::MAX),
    ]
}

/// A column: its element type and rows (None = NULL).
#[derive(Debug, Clone)]
struct Column {
    kind: u8,
    rows: Vec<Option<Vec<f32>>>,
}

fn column(rows: usize) -> impl Strategy<Value = Column> {
    (0u8..5, 0usize..6).prop_flat_map(move |(kind, len)| {
        // Kind 4 is a variable-length list, so its rows may differ in length.
        let row = if kind == 4 {
            prop::collection::vec(element(), 0..6).boxed()
        } else {
            prop::collection::vec(element(), len..=len).boxed()
        };
        prop::collection::vec(prop::option::weighted(0.85, row), rows..=rows)
            .prop_map(move |rows| Column { kind, rows })
    })
}

fn list(values: ArrayRef, rows: &[Option<Vec<f32>>]) -> ArrayRef {
    let field = Arc::new(Field::new_list_field(values.data_type().clone(), true));
    let lengths = rows.iter().map(|r| r.as_ref().map_or(0, Vec::len));
    let nulls: Vec<bool> = rows.iter().map(Option::is_some).collect();
    Arc::new(ListArray::new(
        field,
        OffsetBuffer::from_lengths(lengths),
        values,
        Some(nulls.into()),
    ))
}

/// The column as an Arrow array: fixed-size lists of float32 / float16 / bfloat16 bits, a float64 list, or
/// a variable-length float32 list.
fn to_array(c: &Column) -> ArrayRef {
    let width = c.rows.iter().flatten().map(Vec::len).next().unwrap_or(0);
    let flat = |w: usize| -> Vec<f32> {
        c.rows
            .iter()
            .flat_map(|r| r.clone().unwrap_or_else(|| vec![0.0; w]))
            .collect()
    };
    let fixed = |values: ArrayRef| -> ArrayRef {
        let field = Arc::new(Field::new_list_field(values.data_type().clone(), true));
        let nulls: Vec<bool> = c.rows.iter().map(Option::is_some).collect();
        Arc::new(FixedSizeListArray::new(field, width as i32, values, Some(nulls.into())))
    };
    match c.kind {
        0 => fixed(Arc::new(Float32Array::from(flat(width)))),
        1 => fixed(Arc::new(Float16Array::from_iter_values(
            flat(width).into_iter().map(half::f16::from_f32),
        ))),
        2 => fixed(Arc::new(UInt16Array::from_iter_values(
            flat(width).into_iter().map(|x| half::bf16::from_f32(x).to_bits()),
        ))),
        3 => list(
            Arc::new(Float64Array::from_iter_values(
                c.rows.iter().flatten().flatten().map(|&x| f64::from(x)),
            )),
            &c.rows,
        ),
        _ => list(
            Arc::new(Float32Array::from_iter_values(
                c.rows.iter().flatten().flatten().copied(),
            )),
            &c.rows,
        ),
    }
}

/// Every query shape over columns `a`, `b` (vectors) and `x` (numbers), with a size argument `n`.
fn queries(n: i64) -> Vec<String> {
    let mut q: Vec<String> = [
        "diff_norm(a, b)",
        "cosine_sim(a, b)",
        "pair_stats(a, b)",
        "vec_norm(a)",
        "vec_sub(a, b)",
        "vec_dot(a, b)",
        "kl_div(a, b)",
        "to_float32(a)",
    ]
    .iter()
    .map(|f| format!("SELECT {f} FROM t"))
    .collect();
    for agg in ["normdiff(a, b)", "mean_vec(a)", "mean_diff(a, b)", "count(*)"] {
        q.push(format!("SELECT {agg} FROM t"));
        q.push(format!("SELECT g, {agg} FROM t GROUP BY g"));
    }
    q.push(format!("SELECT nth_largest(x, {n}) FROM t"));
    q.push(format!("SELECT g, nth_largest(x, {n}) FROM t GROUP BY g"));
    q.push(format!("SELECT nth_largest(vec_norm(a), {n}) FROM t"));
    q
}

fn session(a: &Column, b: &Column, xs: &[Option<f64>]) -> SessionContext {
    let (a, b) = (to_array(a), to_array(b));
    let rows = a.len();
    let schema = Arc::new(Schema::new(vec![
        Field::new("a", a.data_type().clone(), true),
        Field::new("b", b.data_type().clone(), true),
        Field::new("x", DataType::Float64, true),
        Field::new("g", DataType::Int64, false),
    ]));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            a,
            b,
            Arc::new(Float64Array::from(xs.to_vec())),
            Arc::new(datafusion::arrow::array::Int64Array::from_iter_values(
                (0..rows as i64).map(|i| i % 3),
            )),
        ],
    )
    .unwrap();
    // Two partitions, so aggregates also merge partial states.
    let half = rows / 2;
    let parts = vec![vec![batch.slice(0, half)], vec![batch.slice(half, rows - half)]];
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(2));
    diffsql_udfs::register_all(&ctx);
    ctx.register_table("t", Arc::new(MemTable::try_new(schema, parts).unwrap()))
        .unwrap();
    ctx
}

/// Runs `sql`; fails the property on a panic (in this thread or a DataFusion task) or on an error message
/// that spans lines.
fn run(rt: &tokio::runtime::Runtime, ctx: &SessionContext, sql: &str) -> Result<(), TestCaseError> {
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        rt.block_on(async { ctx.sql(sql).await?.collect().await })
    }));
    match result {
        Err(_) => Err(TestCaseError::fail(format!("{sql}: panicked"))),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            let msg = e.to_string();
            prop_assert!(!msg.to_lowercase().contains("panic"), "{sql}: {msg}");
            Ok(())
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn no_function_panics_on_any_input(
        (a, b, xs) in (0usize..9).prop_flat_map(|rows| (
            column(rows),
            column(rows),
            prop::collection::vec(prop::option::of(prop_oneof![-1e3f64..1e3, Just(f64::NAN), Just(f64::INFINITY)]), rows..=rows),
        )),
        n in prop_oneof![Just(i64::MAX), Just(i64::MIN), Just(0i64), Just(-1i64), 1i64..20, Just(1i64 << 40)],
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
        let ctx = session(&a, &b, &xs);
        for sql in queries(n) {
            run(&rt, &ctx, &sql)?;
        }
    }
}

/// The cases the fault campaign found, kept as plain tests.
#[test]
fn huge_n_is_an_error_not_a_panic() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ctx = SessionContext::new();
    diffsql_udfs::register_all(&ctx);
    let err = rt
        .block_on(async {
            ctx.sql("SELECT nth_largest(x, 9223372036854775807) FROM (VALUES (1.0)) t(x)")
                .await?
                .collect()
                .await
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("nth_largest") && err.contains("at most"), "{err}");
}
