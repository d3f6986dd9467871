"""diffsql from Python: the activation cache's tables and diffsql's functions in a datafusion-python session.

    import diffsql
    ctx = diffsql.connect("cache")
    ctx.sql("SELECT layer, normdiff(base, ft) FROM acts GROUP BY layer ORDER BY layer").to_pandas()

Every table of the cache (activations, acts, tokens, sequences, vocab, logit_diff, logit_diff_totals) and
diffsql's scalar and aggregate functions are registered through the DataFusion FFI, so queries run in diffsql's
own code; its table functions (cache_info, logit_lens, nmf, generate, steer, patchscope, latents, ...) too,
subquery arguments included. `ctx.query("kl/03_top_tokens", organism="caps")` runs a saved query with its
method's parameters. `diffsql.sql` runs a query in diffsql's own session instead and returns a pyarrow Table.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Iterable

import datafusion
import numpy as np
import pyarrow as pa

from . import _native
from ._native import DiffsqlError

__all__ = ["connect", "sql", "vectors", "run", "preprocess", "DiffsqlError", "SessionContext", "DataFrame"]

_FFI_MAJOR = 55


def _check_ffi() -> None:
    version = datafusion.__version__.split(".")[0]
    if int(version) != _native.ffi_version() or _native.ffi_version() != _FFI_MAJOR:
        raise DiffsqlError(
            f"diffsql was built for datafusion {_native.ffi_version()}.x but datafusion {datafusion.__version__} "
            f"is installed: pip install 'datafusion=={_native.ffi_version()}.*'"
        )


def _decoded_type(t: pa.DataType) -> pa.DataType:
    """FixedSizeList<float32> for a vector type stored as bfloat16 bits (UInt16) or float16; other types as they are."""
    if pa.types.is_fixed_size_list(t) and (pa.types.is_uint16(t.value_type) or pa.types.is_float16(t.value_type)):
        return pa.list_(pa.float32(), t.list_size)
    return t


def _decode_vectors(array: pa.Array) -> pa.Array:
    """A FixedSizeList of bfloat16 bits (UInt16) or float16 as a FixedSizeList of float32; other arrays as they are."""
    if _decoded_type(array.type) == array.type:
        return array
    d = array.type.list_size
    values = array.values.slice(array.offset * d, len(array) * d).to_numpy(zero_copy_only=False)
    if values.dtype == np.uint16:
        values = (values.astype(np.uint32) << 16).view(np.float32)
    else:
        values = values.astype(np.float32)
    mask = array.is_null() if array.null_count else None
    return pa.FixedSizeListArray.from_arrays(pa.array(values, pa.float32()), d, mask=mask)


def _decode_table(table: pa.Table) -> pa.Table:
    fields, columns = [], []
    for field, column in zip(table.schema, table.columns):
        chunks = [_decode_vectors(c) for c in column.chunks]
        kind = _decoded_type(field.type)
        fields.append(pa.field(field.name, kind, field.nullable, field.metadata))
        columns.append(pa.chunked_array(chunks, type=kind))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields, table.schema.metadata))


class DataFrame(datafusion.DataFrame):
    """A datafusion DataFrame whose results come out with vectors as float32 (bfloat16 and float16 decoded)."""

    def to_arrow_table(self) -> pa.Table:
        return _decode_table(super().to_arrow_table())

    def collect(self) -> list[pa.RecordBatch]:
        return self.to_arrow_table().to_batches()

    def to_pandas(self):
        return self.to_arrow_table().to_pandas()

    def to_polars(self):
        import polars as pl

        return pl.from_arrow(self.to_arrow_table())

    def to_pylist(self) -> list[dict]:
        return self.to_arrow_table().to_pylist()


class SessionContext(datafusion.SessionContext):
    """A datafusion SessionContext over a diffsql cache (made by `connect`): `sql` results decode vectors to
    float32 on the way out, diffsql's table functions take subquery arguments, and `query` runs saved queries."""

    _diffsql_functions: list[str] = []

    def sql(self, query: str, *args, **kwargs) -> DataFrame:
        return DataFrame(self._plan(query, *args, **kwargs).df)

    def _plan(self, query: str, *args, **kwargs) -> datafusion.DataFrame:
        """Plans `query`: subquery arguments of diffsql's table functions are run first, here, and handed to
        the function as rows (the FFI cannot carry a subquery); an error a table function raised is raised as
        it was, rather than wrapped in datafusion's text."""
        lifted = _native.split_subqueries(query, self._diffsql_functions) if self._diffsql_functions else None
        tokens = []
        try:
            if lifted is not None:
                query, subqueries = lifted
                for token, text in subqueries:
                    self._arguments[token] = self._plan(text, *args, **kwargs).to_arrow_table()
                    tokens.append(token)
            self._function_error = None
            try:
                return super().sql(query, *args, **kwargs)
            except Exception as e:
                error, self._function_error = self._function_error, None
                if error is not None:
                    raise error from e
                raise
        finally:
            for token in tokens:
                self._arguments.pop(token, None)

    def _table_function(self, session: _native.Session, name: str) -> Callable[..., object]:
        """The Python callable datafusion-python calls for diffsql's table function `name`."""

        def call(*raw_args):
            try:
                arguments = []
                for i, raw in enumerate(raw_args):
                    arg = datafusion.Expr(raw)
                    if arg.variant_name() != "Literal":
                        raise DiffsqlError(f"{name}: argument {i + 1} must be a literal or a subquery, got {arg}")
                    value = arg.python_value()
                    lifted = self._arguments.get(value.as_py()) if isinstance(value.as_py(), str) else None
                    if lifted is not None:
                        arguments.append((True, lifted))
                    else:
                        arguments.append((False, pa.table({"value": pa.array([value], value.type)})))
                return session.table_function(name, arguments)
            except Exception as error:
                self._function_error = error
                raise

        return call

    def queries(self) -> list[str]:
        """The saved queries `query` can run: `kl`, `kl/03_top_tokens`, `layer_normdiff`, ..."""
        names = []
        for path in sorted(self._queries.rglob("*.sql")):
            names.append(path.relative_to(self._queries).with_suffix("").as_posix())
        folders = sorted({n.split("/")[0] for n in names if "/" in n})
        return sorted(names + folders)

    def query(self, name: str, *overrides: str, **params) -> DataFrame:
        """Runs the saved query `name` (`queries/NAME.sql`, or every file of `queries/NAME/` in order) and
        returns the last statement's result. `$` parameters are bound as in `diffing/method=NAME`: the method's
        config, `model`/`organism`/`side` from `overrides` (`"organism=caps"`) or the `organism=`/`model=`
        keywords, then any keyword over them (`top_n=20`). Tables and views a file defines are replaced; the
        results of statements before the last are not computed. A dictionary method's dictionary is trained
        first when the cache lacks it (progress drawn as for `run`), unless `dictionary=` names one."""
        settings = [f"cache_dir={self._cache_dir}", *overrides]
        for key in ("model", "organism"):
            if key in params:
                settings.append(f"{key}={params.pop(key)}")
        bound = []
        # Binding may train the method's dictionary: its progress is drawn like run()'s.
        _with_progress(True, lambda: bound.extend(_native.saved_query(
            str(self._queries), str(self._configs), name, settings, list(params.items()))))
        for i, (text, defines) in enumerate(bound):
            if defines and self.table_exist(defines):
                self.deregister_table(defines)
            if i + 1 == len(bound):
                return self.sql(text)
            if defines is not None:  # a table or view the later statements read; other results are skipped
                self.sql(text).collect()
        raise DiffsqlError(f"saved query {name!r} has no statement")


def connect(
    cache_dir: str | os.PathLike = "cache",
    configs: str | os.PathLike = "configs",
    queries: str | os.PathLike = "queries",
) -> SessionContext:
    """A datafusion-python SessionContext over the cache at `cache_dir`, with every diffsql table and function.

    `configs` is the folder of diffsql's configs (model configs name the models `logit_lens` and `steer` load;
    method configs give saved queries their parameters), `queries` the folder of saved queries
    (`ctx.query(name, ...)`). Query results come out with vectors as FixedSizeList<float32> (stored
    bfloat16/float16 decoded).
    """
    _check_ffi()
    session = _native.Session(_cache_location(cache_dir), str(Path(configs)))
    ctx = SessionContext()
    ctx._cache_dir, ctx._configs, ctx._queries = _cache_location(cache_dir), Path(configs), Path(queries)
    ctx._arguments, ctx._function_error = {}, None
    for name, table in session.tables():
        ctx.register_table(name, table)
    for f in session.scalar_functions():
        ctx.register_udf(datafusion.udf(f))
    for f in session.aggregate_functions():
        ctx.register_udaf(datafusion.udaf(f))
    ctx._diffsql_functions = session.table_function_names()
    for name in ctx._diffsql_functions:
        ctx.register_udtf(datafusion.udtf(ctx._table_function(session, name), name))
    return ctx


def sql(
    query: str,
    cache_dir: str | os.PathLike = "cache",
    configs: str | os.PathLike = "configs",
) -> pa.Table:
    """Runs `query` in diffsql's own session over the cache (every table function included: cache_info,
    logit_lens, nmf, generate, steer, patchscope, latents, ...) and returns the last statement's rows."""
    session = _native.Session(_cache_location(cache_dir), str(Path(configs)))
    return _decode_table(pa.table(session.sql(query)))


def vectors(table: pa.Table | datafusion.DataFrame, column: str) -> np.ndarray:
    """One contiguous (n, d) float32 numpy array of a vector column (bfloat16 and float16 decoded)."""
    if isinstance(table, datafusion.DataFrame):
        table = table.to_arrow_table()
    if column not in table.column_names:
        raise DiffsqlError(f"vectors: no column {column!r}; the columns are {', '.join(table.column_names)}")
    values = table.column(column).combine_chunks()
    if not pa.types.is_fixed_size_list(values.type):
        raise DiffsqlError(f"vectors: the column is {values.type}, not a fixed-size list of numbers")
    if values.null_count:
        raise DiffsqlError("vectors: the column has NULL vectors: filter them out first")
    d = values.type.list_size
    flat = _decode_vectors(values).flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(-1, d).astype(np.float32, copy=False)


def _cache_location(cache_dir: str | os.PathLike) -> str:
    """A cache's directory, or its `s3://bucket/prefix` URL as given (a Path would fold its `//`)."""
    text = os.fspath(cache_dir)
    return text if text.startswith("s3://") else str(Path(text))


def _overrides(args: Iterable[str], kwargs: dict) -> list[str]:
    out = list(args)
    for key, value in kwargs.items():
        if isinstance(value, (list, tuple)):
            value = "[" + ",".join(str(v) for v in value) + "]"
        out.append(f"{key.replace('__', '.')}={value}")
    return out


class _ProgressLine:
    """Draws progress on one line of sys.stdout with carriage returns: a terminal and a Jupyter cell both
    overwrite it in place."""

    def __init__(self) -> None:
        self.width = 0

    def __call__(self, line: str) -> None:
        text = line.rstrip()
        sys.stdout.write("\r" + text.ljust(self.width) + ("" if text else "\r"))
        sys.stdout.flush()
        self.width = len(text)

    def close(self) -> None:
        if self.width:
            sys.stdout.write("\n")
            sys.stdout.flush()


def _with_progress(progress: bool | Callable[[str], None], work: Callable[[], None]) -> None:
    show = _ProgressLine() if progress is True else progress or None
    _native.set_progress(show)
    try:
        work()
    finally:
        _native.set_progress(None)
        if isinstance(show, _ProgressLine):
            show.close()


def run(*overrides: str, project_root: str | os.PathLike = ".", progress: bool | Callable[[str], None] = True,
        **settings) -> None:
    """`diffsql run` with the same overrides: `run("organism=caps", "diffing/method=kl")` or
    `run(organism="caps", pipeline__mode="diffing")` (`__` for a dot). Errors raise DiffsqlError. Progress
    (tokens, tokens/s, ETA) is drawn on sys.stdout, which a notebook shows; `progress=f` hands each line to f
    instead, `progress=False` hides it."""
    args = _overrides(overrides, settings)
    _with_progress(progress, lambda: _native.run(args, str(Path(project_root))))


def preprocess(*overrides: str, project_root: str | os.PathLike = ".",
               progress: bool | Callable[[str], None] = True, **settings) -> None:
    """`diffsql preprocess` with the same overrides (pipeline.mode=preprocessing), progress as for `run`."""
    args = _overrides(overrides, settings) + ["pipeline.mode=preprocessing"]
    _with_progress(progress, lambda: _native.run(args, str(Path(project_root))))
