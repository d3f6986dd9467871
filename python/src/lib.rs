//! diffsql's Python extension: hands datafusion-python the cache's tables and diffsql's functions as
//! DataFusion FFI capsules (the `__datafusion_*__` protocol), and runs preprocessing and diffing methods with
//! the CLI's `key=value` overrides. `python/diffsql/__init__.py` builds the user-facing `connect()` on it.

use std::path::PathBuf;
use std::ptr::NonNull;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ffi_stream::{ArrowArrayStreamReader, FFI_ArrowArrayStream};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchIterator, RecordBatchReader};
use datafusion::catalog::TableProvider;
use datafusion::logical_expr::{AggregateUDF, ScalarUDF};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::Value as SqlValue;
use datafusion_ffi::proto::logical_extension_codec::FFI_LogicalExtensionCodec;
use datafusion_ffi::table_provider::FFI_TableProvider;
use datafusion_ffi::udaf::FFI_AggregateUDF;
use datafusion_ffi::udf::FFI_ScalarUDF;
use diffsql_sql::foreign;
use diffsql_sql::tables::{VectorTable, VectorTableKind};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyCapsule};

pyo3::create_exception!(_native, DiffsqlError, pyo3::exceptions::PyException);

/// An error as diffsql prints it: one line, causes joined.
fn error(e: impl std::fmt::Display) -> PyErr {
    DiffsqlError::new_err(e.to_string().replace('\n', " "))
}

fn anyhow_error(e: anyhow::Error) -> PyErr {
    DiffsqlError::new_err(format!("{e:#}").replace('\n', " "))
}

/// The logical codec of the calling datafusion-python session (its `__datafusion_logical_extension_codec__`).
fn session_codec(session: &Bound<PyAny>) -> PyResult<FFI_LogicalExtensionCodec> {
    let name = "__datafusion_logical_extension_codec__";
    let capsule = if session.hasattr(name)? {
        session.getattr(name)?.call0()?
    } else {
        session.clone()
    };
    let capsule = capsule.cast::<PyCapsule>()?;
    let pointer = capsule.pointer_checked(Some(c"datafusion_logical_extension_codec"))?;
    let codec: NonNull<FFI_LogicalExtensionCodec> = pointer.cast();
    // Safety: the capsule of that name holds an FFI_LogicalExtensionCodec, owned by the capsule.
    Ok(unsafe { codec.as_ref() }.clone())
}

/// One table of the cache.
#[pyclass(module = "diffsql._native", frozen)]
struct Table {
    provider: Arc<dyn TableProvider>,
    /// The runtime its execution streams are polled in: ours for table functions' results (their plans may
    /// spawn tasks), none for the cache's tables (their streams do not, and stay on the caller's threads).
    runtime: Option<tokio::runtime::Handle>,
}

#[pymethods]
impl Table {
    fn __datafusion_table_provider__<'py>(
        &self,
        py: Python<'py>,
        session: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyCapsule>> {
        let codec = session_codec(&session)?;
        let ffi = FFI_TableProvider::new_with_ffi_codec(Arc::clone(&self.provider), true, self.runtime.clone(), codec);
        PyCapsule::new_with_value(py, ffi, c"datafusion_table_provider")
    }
}

/// One scalar function.
#[pyclass(module = "diffsql._native", frozen)]
struct ScalarFunction {
    udf: Arc<ScalarUDF>,
}

#[pymethods]
impl ScalarFunction {
    fn __datafusion_scalar_udf__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyCapsule>> {
        PyCapsule::new_with_value(py, FFI_ScalarUDF::from(Arc::clone(&self.udf)), c"datafusion_scalar_udf")
    }

    #[getter]
    fn name(&self) -> String {
        self.udf.name().to_string()
    }
}

/// One aggregate function.
#[pyclass(module = "diffsql._native", frozen)]
struct AggregateFunction {
    udaf: Arc<AggregateUDF>,
}

#[pymethods]
impl AggregateFunction {
    fn __datafusion_aggregate_udf__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyCapsule>> {
        PyCapsule::new_with_value(
            py,
            FFI_AggregateUDF::from(Arc::clone(&self.udaf)),
            c"datafusion_aggregate_udf",
        )
    }

    #[getter]
    fn name(&self) -> String {
        self.udaf.name().to_string()
    }
}

/// The result of a query as an Arrow C stream (`__arrow_c_stream__`), which pyarrow, polars and pandas import
/// without a copy.
#[pyclass(module = "diffsql._native")]
struct ArrowStream {
    stream: std::sync::Mutex<Option<FFI_ArrowArrayStream>>,
}

#[pymethods]
impl ArrowStream {
    #[pyo3(signature = (requested_schema = None))]
    fn __arrow_c_stream__<'py>(
        &self,
        py: Python<'py>,
        requested_schema: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyCapsule>> {
        let _ = requested_schema; // the stream is offered in its own schema
        let stream = self
            .stream
            .lock()
            .map_err(|_| PyRuntimeError::new_err("the stream's lock is poisoned"))?
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("the stream was already consumed"))?;
        PyCapsule::new_with_value(py, stream, c"arrow_array_stream")
    }
}

/// Bytes of one vector column per scan batch in tables handed to datafusion-python.
const FFI_BATCH_BYTES: usize = 4 << 20;

/// A diffsql session over one cache: its tables and functions, to register in a datafusion-python context.
#[pyclass(module = "diffsql._native")]
struct Session {
    ctx: SessionContext,
    /// Runs `sql`, the catalogue lookups and the scans of table functions' results (datafusion-python polls
    /// those from its own runtime, which this library's tokio cannot see).
    runtime: Arc<tokio::runtime::Runtime>,
}

/// The batches of an object that offers an Arrow C stream (`__arrow_c_stream__`: a pyarrow Table).
fn read_arrow_stream(object: &Bound<PyAny>) -> PyResult<(SchemaRef, Vec<RecordBatch>)> {
    let capsule = object.call_method0("__arrow_c_stream__")?;
    let capsule = capsule.cast::<PyCapsule>()?;
    let pointer: NonNull<FFI_ArrowArrayStream> = capsule.pointer_checked(Some(c"arrow_array_stream"))?.cast();
    // Safety: the capsule of that name holds an FFI_ArrowArrayStream; `from_raw` moves it out and leaves a
    // released one behind, which the capsule's destructor then skips.
    let reader = unsafe { ArrowArrayStreamReader::from_raw(pointer.as_ptr()) }.map_err(error)?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>().map_err(error)?;
    Ok((schema, batches))
}

#[pymethods]
impl Session {
    #[new]
    fn new(cache_dir: PathBuf, configs: PathBuf) -> PyResult<Self> {
        let access = diffsql_sql::SqlAccess {
            read_only: true,
            protected: Vec::new(),
        };
        let ctx = diffsql_sql::open_session_with(&cache_dir, access).map_err(anyhow_error)?;
        diffsql_sql::register_model_functions(&ctx, diffsql_core::config::ConfigDir::new(&configs));
        // Every scan batch crosses the FFI at a fixed cost: 4 MiB of vectors per batch instead of 1 MiB.
        for (name, kind) in [
            ("activations", VectorTableKind::Activations),
            ("acts", VectorTableKind::Acts),
        ] {
            let layout = diffsql_core::cache::CacheLayout::new(&cache_dir);
            let table = VectorTable::open(layout, kind)
                .map_err(anyhow_error)?
                .with_batch_bytes(FFI_BATCH_BYTES);
            ctx.deregister_table(name).map_err(error)?;
            ctx.register_table(name, Arc::new(table)).map_err(error)?;
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(error)?;
        Ok(Self {
            ctx,
            runtime: Arc::new(runtime),
        })
    }

    /// Runs `query` (several statements: the last one's result) in diffsql's own session, with every table
    /// function, and returns its rows as an Arrow stream.
    fn sql(&self, py: Python<'_>, query: String) -> PyResult<ArrowStream> {
        let ctx = self.ctx.clone();
        let (schema, batches) = py
            .detach(|| -> anyhow::Result<_> {
                self.runtime.block_on(async {
                    let mut last = None;
                    diffsql_sql::run_statements(&ctx, &query, |r| {
                        last = Some((r.schema, r.batches));
                        Ok(())
                    })
                    .await?;
                    last.ok_or_else(|| anyhow::anyhow!("no SQL statement in the query"))
                })
            })
            .map_err(anyhow_error)?;
        let reader = RecordBatchIterator::new(batches.into_iter().map(Ok), schema);
        Ok(ArrowStream {
            stream: std::sync::Mutex::new(Some(FFI_ArrowArrayStream::new(Box::new(reader)))),
        })
    }

    /// (name, table) for every table of the cache.
    fn tables(&self) -> PyResult<Vec<(String, Table)>> {
        let schema = self
            .ctx
            .catalog("datafusion")
            .and_then(|c| c.schema("public"))
            .ok_or_else(|| PyRuntimeError::new_err("the session has no default schema"))?;
        let mut out = Vec::new();
        for name in schema.table_names() {
            if let Some(provider) = self.runtime.block_on(schema.table(&name)).map_err(error)? {
                out.push((
                    name,
                    Table {
                        provider,
                        runtime: None,
                    },
                ));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// diffsql's table functions (`cache_info`, `logit_lens`, `nmf`, `steer`, `latents`, ...).
    fn table_function_names(&self) -> Vec<String> {
        foreign::table_function_names(&self.ctx.state())
    }

    /// Calls the table function `name` on `arguments`, each (is a lifted subquery, Arrow table): a subquery's
    /// rows, or a literal as a one-row column. The table it returns scans in this session.
    fn table_function(&self, py: Python<'_>, name: String, arguments: Vec<(bool, Bound<PyAny>)>) -> PyResult<Table> {
        let arguments = arguments
            .iter()
            .map(|(rows, table)| {
                let (schema, batches) = read_arrow_stream(table)?;
                Ok(if *rows {
                    foreign::Argument::Rows(schema, batches)
                } else {
                    foreign::Argument::Literal(schema, batches)
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        let state = self.ctx.state();
        let runtime = self.runtime.handle().clone();
        let provider = py
            .detach(|| foreign::call(&state, &name, arguments, runtime))
            .map_err(error)?;
        Ok(Table {
            provider,
            runtime: Some(self.runtime.handle().clone()),
        })
    }

    /// diffsql's scalar functions.
    fn scalar_functions(&self) -> Vec<ScalarFunction> {
        let ours: Vec<String> = diffsql_udfs::scalar_functions()
            .iter()
            .map(|f| f.name().to_string())
            .chain(["crosscoder_encode", "sae_encode", "pca_project"].map(String::from))
            .collect();
        let state = self.ctx.state();
        ours.iter()
            .filter_map(|name| state.scalar_functions().get(name).cloned())
            .map(|udf| ScalarFunction { udf })
            .collect()
    }

    /// diffsql's aggregate functions.
    fn aggregate_functions(&self) -> Vec<AggregateFunction> {
        let state = self.ctx.state();
        diffsql_udfs::aggregate_functions()
            .iter()
            .filter_map(|f| state.aggregate_functions().get(f.name()).cloned())
            .map(|udaf| AggregateFunction { udaf })
            .collect()
    }
}

/// Runs `diffsql run` with `overrides` (`key=value` strings, as on the command line) from `project_root`
/// (the folder of configs/ and queries/): preprocessing and/or the configured method, per `pipeline.mode`.
#[pyfunction]
fn run(py: Python<'_>, overrides: Vec<String>, project_root: PathBuf) -> PyResult<()> {
    py.detach(|| -> anyhow::Result<()> {
        let configs = diffsql_core::config::ConfigDir::new(project_root.join("configs"));
        let parsed = diffsql_core::config::parse_all(&overrides, false)?;
        let settings = configs.resolve(&parsed)?;
        diffsql::pipeline::run_one(&settings, &configs, &project_root.join("queries"))
    })
    .map_err(anyhow_error)
}

/// Lifts the subquery arguments of calls to `functions` out of `sql`: (rewritten SQL, [(literal, subquery)]),
/// or None when there are none.
#[pyfunction]
fn split_subqueries(sql: &str, functions: Vec<String>) -> Option<(String, Vec<(String, String)>)> {
    foreign::split_subqueries(sql, &functions)
}

/// A parameter value from Python as a SQL literal.
fn sql_value(key: &str, value: &Bound<PyAny>) -> PyResult<SqlValue> {
    if let Ok(b) = value.cast::<PyBool>() {
        return Ok(SqlValue::Boolean(b.is_true()));
    }
    if let Ok(n) = value.extract::<i64>() {
        return Ok(SqlValue::Number(n.to_string(), false));
    }
    if let Ok(x) = value.extract::<f64>() {
        // Debug formatting keeps the decimal point, so the literal stays a float.
        return Ok(SqlValue::Number(format!("{x:?}"), false));
    }
    if let Ok(s) = value.extract::<String>() {
        return Ok(SqlValue::SingleQuotedString(s));
    }
    Err(DiffsqlError::new_err(format!(
        "parameter {key}: {} is not a string, number or boolean: saved queries take scalars",
        value.get_type().name()?
    )))
}

/// The statements of the saved query `name` with its parameters bound: those of its method (when it is in a
/// method's folder; a method's dictionary is trained first if the cache lacks it and `params` does not name
/// one) and `model`/`organism`/`side` from `overrides`, then `params` over them. Each comes with the table or
/// view it defines, if any.
#[pyfunction]
fn saved_query(
    py: Python<'_>,
    queries: PathBuf,
    configs: PathBuf,
    name: &str,
    overrides: Vec<String>,
    params: Vec<(String, Bound<PyAny>)>,
) -> PyResult<Vec<(String, Option<String>)>> {
    let given: Vec<&str> = params.iter().map(|(k, _)| k.as_str()).collect();
    let configs = diffsql_core::config::ConfigDir::new(&configs);
    let mut bound = py
        .detach(|| diffsql_diffing::saved_query_params(&configs, name, &overrides, &given))
        .map_err(anyhow_error)?;
    for (key, value) in &params {
        let value = sql_value(key, value)?;
        bound.retain(|(k, _)| k != key);
        bound.push((key.clone(), value));
    }
    let sql = diffsql_sql::queries::read(&queries, name).map_err(anyhow_error)?;
    let statements = diffsql_sql::queries::bind_statements(&sql, &bound).map_err(anyhow_error)?;
    Ok(statements
        .iter()
        .map(|s| (s.to_string(), diffsql_sql::queries::defines(s)))
        .collect())
}

/// Sends progress bars to `callback(line)` (each rendered line; "" when a bar is cleared), or back to the
/// terminal with None.
#[pyfunction]
#[pyo3(signature = (callback = None))]
fn set_progress(callback: Option<Py<PyAny>>) {
    diffsql_core::progress::set_observer(callback.map(|callback| -> diffsql_core::progress::Observer {
        Arc::new(move |line: &str| {
            Python::attach(|py| {
                // A failing callback must not stop the work it reports on.
                let _ = callback.call1(py, (line,));
            })
        })
    }));
}

/// The DataFusion FFI version this extension was built with (the major version must equal datafusion-python's).
#[pyfunction]
fn ffi_version() -> u64 {
    datafusion_ffi::version()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Session>()?;
    m.add_class::<Table>()?;
    m.add_class::<ScalarFunction>()?;
    m.add_class::<AggregateFunction>()?;
    m.add_class::<ArrowStream>()?;
    m.add_function(wrap_pyfunction!(run, m)?)?;
    m.add_function(wrap_pyfunction!(ffi_version, m)?)?;
    m.add_function(wrap_pyfunction!(set_progress, m)?)?;
    m.add_function(wrap_pyfunction!(split_subqueries, m)?)?;
    m.add_function(wrap_pyfunction!(saved_query, m)?)?;
    m.add("DiffsqlError", m.py().get_type::<DiffsqlError>())?;
    Ok(())
}
