"""diffsql from Python against the diffsql binary and numpy, on the bundled pair preprocessed small.

Run by .ci/run after `maturin build` and installing the wheel into a fresh venv; DIFFSQL_BIN names the binary
and the working directory is the repository root.
"""

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import diffsql

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("DIFFSQL_BIN", str(Path.home() / ".cache/diffsql-target/debug/diffsql"))
CARD = "SELECT layer, normdiff(base, ft) AS normdiff FROM acts GROUP BY layer ORDER BY layer"


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache")
    diffsql.preprocess(
        "organism=caps",
        "dataset=[shakespeare_pretrain]",
        "preprocessing.max_samples=16",
        "preprocessing.context_len=32",
        "preprocessing.dtype=bfloat16",
        f"cache_dir={path}",
        project_root=ROOT,
    )
    return path


@pytest.fixture(scope="session")
def ctx(cache):
    return diffsql.connect(cache, configs=ROOT / "configs")


def binary_csv(cache, sql):
    out = subprocess.run(
        [BIN, "--cache", str(cache), "sql", "--format", "csv", "-c", sql],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    return list(csv.DictReader(io.StringIO(out)))


def test_the_card_query_equals_the_binary(ctx, cache):
    got = ctx.sql(CARD).to_pandas()
    want = binary_csv(cache, CARD)
    assert [int(r["layer"]) for r in want] == got["layer"].tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(got["normdiff"], [float(r["normdiff"]) for r in want], rtol=1e-6)


def test_every_table_is_there(ctx):
    names = set(ctx.catalog().schema().names())
    assert {"activations", "acts", "tokens", "sequences", "vocab", "logit_diff", "logit_diff_totals"} <= names
    tokens = ctx.sql("SELECT count(*) AS n FROM tokens WHERE organism = 'caps'").to_pandas()["n"][0]
    assert tokens > 100


def test_results_come_out_as_float32_vectors(ctx, cache):
    table = ctx.sql("SELECT base, to_float32(base) AS decoded FROM acts WHERE layer = 0 LIMIT 20").to_arrow_table()
    assert table.schema.field("base").type == pa.list_(pa.float32(), 128)
    assert table.column("base").equals(table.column("decoded"))
    # The bfloat16 bits stored in the Parquet files, decoded by hand with numpy, are the same numbers.
    files = pq.read_table(cache / "activations/model=shakespeare/organism=base/layer=0").sort_by(
        [("dataset", "ascending"), ("seq_id", "ascending"), ("pos", "ascending")])
    assert files.schema.field("act").metadata[b"diffsql.dtype"] == b"bfloat16"
    raw = np.frombuffer(b"".join(c.buffers()[1].to_pybytes() for c in files.column("act").chunks), np.uint16)
    by_hand = (raw.astype(np.uint32) << 16).view(np.float32).reshape(files.num_rows, 128)
    decoded = ctx.sql("SELECT act FROM activations WHERE organism = 'base' AND layer = 0 "
                      "ORDER BY dataset, seq_id, pos").to_arrow_table()
    np.testing.assert_array_equal(diffsql.vectors(decoded, "act"), by_hand)
    frame = ctx.sql("SELECT ft FROM acts WHERE layer = 0 LIMIT 3").to_pandas()
    assert np.stack(frame["ft"].to_numpy()).dtype == np.float32


def test_vectors_decode_bfloat16_and_functions_agree_with_numpy(ctx):
    df = ctx.sql("SELECT base, ft, diff_norm(base, ft) AS d, cosine_sim(base, ft) AS c, vec_norm(ft) AS n, "
                 "to_float32(ft) AS ft32 FROM acts WHERE layer = 2 ORDER BY dataset, seq_id, pos")
    table = df.to_arrow_table()
    base, ft = diffsql.vectors(table, "base"), diffsql.vectors(table, "ft")
    assert base.dtype == np.float32 and base.shape == ft.shape and base.shape[1] == 128
    assert base.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(ft, diffsql.vectors(table, "ft32"))
    np.testing.assert_allclose(table["d"].to_numpy(), np.linalg.norm(ft - base, axis=1), rtol=1e-5)
    np.testing.assert_allclose(table["n"].to_numpy(), np.linalg.norm(ft, axis=1), rtol=1e-5)
    cos = (base * ft).sum(1) / (np.linalg.norm(base, axis=1) * np.linalg.norm(ft, axis=1))
    np.testing.assert_allclose(table["c"].to_numpy(), cos, rtol=1e-5, atol=1e-6)
    # The aggregates: mean_diff and normdiff per layer against numpy.
    agg = ctx.sql("SELECT normdiff(base, ft) AS nd, mean_diff(base, ft) AS md FROM acts WHERE layer = 2").to_arrow_table()
    np.testing.assert_allclose(agg["nd"][0].as_py(), np.linalg.norm(ft - base, axis=1).mean(), rtol=1e-5)
    np.testing.assert_allclose(diffsql.vectors(agg, "md")[0], (ft - base).mean(0), rtol=1e-4, atol=1e-6)


def test_pandas_polars_and_arrow_round_trips(ctx):
    import polars as pl

    sql = "SELECT seq_id, pos, to_float32(ft) AS v FROM acts WHERE layer = 1 ORDER BY seq_id, pos LIMIT 50"
    arrow = ctx.sql(sql).to_arrow_table()
    frame = ctx.sql(sql).to_polars()
    pandas = ctx.sql(sql).to_pandas()
    assert frame.shape[0] == len(pandas) == arrow.num_rows == 50
    np.testing.assert_array_equal(np.stack(pandas["v"].to_numpy()), diffsql.vectors(arrow, "v"))
    np.testing.assert_array_equal(np.vstack(frame["v"].to_list()), diffsql.vectors(arrow, "v"))


def test_export_is_read_by_duckdb_polars_and_pyarrow(ctx, tmp_path):
    import duckdb
    import polars as pl

    path = tmp_path / "export.parquet"
    ctx.sql(f"COPY (SELECT seq_id, pos, to_float32(vec_sub(ft, base)) AS diff FROM acts WHERE layer = 3 "
            f"ORDER BY seq_id, pos) TO '{path}' STORED AS PARQUET").collect()
    want = diffsql.vectors(pq.read_table(path), "diff")
    duck = duckdb.sql(f"SELECT diff FROM '{path}' ORDER BY seq_id, pos").fetchnumpy()["diff"]
    np.testing.assert_array_equal(np.vstack(duck), want)
    np.testing.assert_array_equal(np.vstack(pl.read_parquet(path)["diff"].to_list()), want)


def test_table_functions_run_in_diffsqls_session(cache, ctx):
    info = diffsql.sql("SELECT organism, rows FROM cache_info() WHERE table_name = 'tokens' ORDER BY organism", cache)
    assert info.column("organism").to_pylist() == ["base", "caps"]
    tokens = ctx.sql("SELECT count(*) AS n FROM tokens WHERE organism = 'caps'").to_pandas()["n"][0]
    assert info.column("rows").to_pylist()[1] == tokens
    # logit_lens with a subquery argument, against the binary.
    lens = ("SELECT rank, token FROM logit_lens((SELECT mean_diff(base, ft) FROM acts WHERE layer = 1), "
            "'shakespeare', 5) WHERE sign = '+' ORDER BY rank")
    got = diffsql.sql(lens, cache, configs=ROOT / "configs").column("token").to_pylist()
    assert got == [r["token"] for r in binary_csv(cache, lens)]
    with pytest.raises(diffsql.DiffsqlError, match="logit_lens"):
        diffsql.sql("SELECT * FROM logit_lens([1.0, 2.0], 'shakespeare', 5)", cache, configs=ROOT / "configs")


def test_every_table_function_is_registered_in_the_context(ctx):
    assert ctx._diffsql_functions == ["cache_info", "generate", "latents", "logit_lens", "nmf", "patchscope",
                                      "steer", "steer_search", "training_curve"]
    # DataFusion's own table functions stay DataFusion's.
    assert ctx.sql("SELECT count(*) AS n FROM generate_series(1, 5)").to_pandas()["n"][0] == 5


def same_rows(ctx, cache, sql, sort=None):
    """The rows of `sql` through the datafusion-python context and from the binary, as strings."""
    got = ctx.sql(sql).to_pandas()
    want = binary_csv(cache, sql)
    assert list(got.columns) == list(want[0].keys()) and len(got) == len(want) > 0, (got, want[:3])
    return got, want


def test_table_functions_through_the_context_equal_the_binary(ctx, cache):
    got, want = same_rows(ctx, cache, "SELECT table_name, organism, layer, rows FROM cache_info() "
                                      "ORDER BY table_name, organism, layer")
    assert [int(r["rows"]) for r in want] == got["rows"].tolist()
    # A subquery of several rows keeps its order (each row an item), and runs in the calling context.
    lens = ("SELECT item, sign, rank, token_id, logit FROM logit_lens((SELECT mean_diff(base, ft) FROM acts "
            "WHERE layer = 2 AND organism = 'caps' GROUP BY pos ORDER BY pos LIMIT 3), 'shakespeare', 4) "
            "ORDER BY item, sign, rank")
    got, want = same_rows(ctx, cache, lens)
    assert got["item"].max() == 2
    assert got["token_id"].tolist() == [int(r["token_id"]) for r in want]
    np.testing.assert_allclose(got["logit"], [float(r["logit"]) for r in want], rtol=1e-5)
    # A literal vector, and the intervention functions with subquery vectors.
    patch = ("SELECT scale, rank, token_id FROM patchscope('shakespeare/caps', (SELECT mean_diff(base, ft) FROM "
             "acts WHERE layer = 1), 1, [0.5, 2.0], 3) ORDER BY scale, rank")
    got, want = same_rows(ctx, cache, patch)
    assert got["token_id"].tolist() == [int(r["token_id"]) for r in want]
    steer = ("SELECT alpha, text FROM steer('shakespeare/caps', 'ROMEO:', (SELECT mean_diff(base, ft) FROM "
             "acts WHERE layer = 1), 1, [0.0, 4.0], 6) ORDER BY alpha")
    got, want = same_rows(ctx, cache, steer)
    assert got["text"].tolist() == [r["text"] for r in want]
    gen = "SELECT text FROM generate('shakespeare/base', 'JULIET:', 5)"
    got, want = same_rows(ctx, cache, gen)
    assert got["text"].tolist() == [r["text"] for r in want]


def test_table_function_errors_name_the_function(ctx):
    with pytest.raises(diffsql.DiffsqlError, match=r"logit_lens\(vector, model, k\) takes 3 arguments"):
        ctx.sql("SELECT * FROM logit_lens([1.0], 'shakespeare')")
    with pytest.raises(Exception, match="d_model is 128"):
        ctx.sql("SELECT * FROM logit_lens([1.0, 2.0], 'shakespeare', 5)").collect()
    with pytest.raises(Exception, match="nosuchtable"):
        ctx.sql("SELECT * FROM logit_lens((SELECT v FROM nosuchtable), 'shakespeare', 5)")
    with pytest.raises(diffsql.DiffsqlError, match="side"):
        ctx.sql("SELECT * FROM generate('shakespeare/nosuch', 'x', 2)")


def test_saved_queries_run_with_their_methods_parameters(cache, ctx, tmp_path):
    for method in ("kl", "diff_mining"):
        diffsql.run(organism="caps", pipeline__mode="diffing", cache_dir=cache, results_dir=tmp_path,
                    **{"diffing/method": method}, project_root=ROOT, progress=False)
    assert "kl/03_top_tokens" in ctx.queries() and "kl" in ctx.queries() and "layer_normdiff" in ctx.queries()
    top = ctx.query("kl/03_top_tokens", organism="caps").to_arrow_table()
    want = pq.read_table(tmp_path / "shakespeare/caps/kl/top_tokens.parquet")
    assert top.column_names == want.column_names
    assert top.column("kl").to_pylist() == want.column("kl").to_pylist()
    assert top.column("context").to_pylist() == want.column("context").to_pylist()
    # A keyword overrides the method's parameter.
    assert ctx.query("kl/03_top_tokens", organism="caps", top_n=3).count() == 3
    # nmf with a subquery argument inside a CTE, parameters bound: the method's topics.
    topics = ctx.query("diff_mining/04_topics", "organism=caps").to_arrow_table()
    want = pq.read_table(tmp_path / "shakespeare/caps/diff_mining/topics.parquet")
    assert topics.column("token_id").to_pylist() == want.column("token_id").to_pylist()
    np.testing.assert_allclose(topics.column("weight").to_numpy(), want.column("weight").to_numpy(), rtol=1e-5)
    # A folder runs its files in order (tables defined are replaced on a rerun) and returns the last result.
    for _ in range(2):
        last = ctx.query("normdiff", organism="caps").to_pandas()
        ctx.query("pca/00_top_latents", organism="caps")  # a file that only defines a view, run twice
    assert len(last) > 0 and ctx.table_exist("top_latents")
    # A dictionary method: the query trains the PCA (the method run then finds it trained) and reads it through
    # latents() in the context.
    components = ctx.query("pca/01_components", organism="caps").to_arrow_table()
    diffsql.run(organism="caps", pipeline__mode="diffing", cache_dir=cache, results_dir=tmp_path,
                **{"diffing/method": "pca"}, project_root=ROOT, progress=False)
    want = pq.read_table(tmp_path / "shakespeare/caps/pca/components.parquet")
    assert components.num_rows == want.num_rows > 1
    np.testing.assert_allclose(components.column("explained_variance").to_numpy(),
                               want.column("explained_variance").to_numpy(), rtol=1e-6)
    # A folder of your own: parameters outside a method are model, organism, side and the keywords.
    mine = tmp_path / "my_queries"
    mine.mkdir()
    (mine / "tokens_of.sql").write_text("SELECT count(*) AS n FROM tokens WHERE organism = $organism AND pos < $upto")
    own = diffsql.connect(cache, configs=ROOT / "configs", queries=mine)
    assert own.queries() == ["tokens_of"]
    n = own.query("tokens_of", organism="caps", upto=4).to_pandas()["n"][0]
    assert n == ctx.sql("SELECT count(*) AS n FROM tokens WHERE organism = 'caps' AND pos < 4").to_pandas()["n"][0]
    with pytest.raises(diffsql.DiffsqlError, match=r"unknown parameter \$upto: the parameters given are \$model"):
        own.query("tokens_of", organism="caps")
    with pytest.raises(diffsql.DiffsqlError, match="no saved query"):
        ctx.query("nosuch")
    with pytest.raises(diffsql.DiffsqlError, match="parameter top_n: list"):
        ctx.query("kl/03_top_tokens", organism="caps", top_n=[1])


def test_errors_are_clear(tmp_path, ctx):
    with pytest.raises(diffsql.DiffsqlError, match="does not exist: run `diffsql preprocess`"):
        diffsql.connect(tmp_path / "nowhere")
    with pytest.raises(Exception, match="diff_norm"):
        ctx.sql("SELECT diff_norm([1.0, 2.0], [1.0, 2.0, 3.0])").collect()
    with pytest.raises(Exception, match="nosuchtable"):
        ctx.sql("SELECT * FROM nosuchtable").collect()
    with pytest.raises(diffsql.DiffsqlError, match="unknown organism"):
        diffsql.run("organism=nosuch", "pipeline.mode=diffing", project_root=ROOT)


def test_a_method_runs_from_python(cache, tmp_path):
    diffsql.run(organism="caps", pipeline__mode="diffing", cache_dir=cache, results_dir=tmp_path,
                **{"diffing/method": "kl"}, project_root=ROOT)
    stats = pq.read_table(tmp_path / "shakespeare/caps/kl/token_stats.parquet")
    assert stats.num_rows >= 1


def test_the_quickstart_script_runs_end_to_end(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "python/examples/quickstart.py"), str(tmp_path / "cache"), "--small"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "roman_concrete" in out.stdout and "mean ‖ft − base‖" in out.stdout, out.stdout
    # The normdiff it prints per layer equals the binary's on the cache it made.
    want = binary_csv(tmp_path / "cache", "SELECT normdiff(base, ft) AS n FROM acts WHERE organism = 'caps' AND layer = 2")
    mean = float(out.stdout.split("mean ‖ft − base‖ =")[1].split()[0])
    assert abs(mean - float(want[0]["n"])) < 1e-4 * max(1.0, mean)


def test_progress_reaches_python(tmp_path):
    lines = []
    diffsql.preprocess("organism=caps", "dataset=[shakespeare_pretrain]", "preprocessing.max_samples=8",
                       f"cache_dir={tmp_path}", project_root=ROOT, progress=lines.append)
    drawn = [l for l in lines if "tokens" in l]
    assert drawn, lines
    assert any("shakespeare_pretrain" in l for l in drawn)


@pytest.fixture
def s3_store(tmp_path, monkeypatch):
    """A real S3 server on 127.0.0.1 (moto, tools/s3_server.py) with a bucket `diffsql-py`, and the AWS
    variables that point diffsql at it (set in this process, so the extension's store client reads them too)."""
    server = subprocess.Popen([sys.executable, str(ROOT / "tools/s3_server.py"), "diffsql-py"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    endpoint = server.stdout.readline().strip()
    assert endpoint.startswith("http://"), "tools/s3_server.py did not start"
    for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                       "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true",
                       "DIFFSQL_SPOOL": str(tmp_path / "spool")}.items():
        monkeypatch.setenv(key, value)
    yield "s3://diffsql-py/cache"
    server.stdin.close()
    server.wait(timeout=30)


def test_a_cache_on_an_s3_store_answers_as_on_disk(s3_store, cache, ctx, tmp_path):
    diffsql.preprocess(
        "organism=caps", "dataset=[shakespeare_pretrain]", "preprocessing.max_samples=16",
        "preprocessing.context_len=32", "preprocessing.dtype=bfloat16", cache_dir=s3_store,
        project_root=ROOT, progress=False,
    )
    on_store = diffsql.connect(s3_store, configs=ROOT / "configs")
    # The same preprocessing gives the same vectors on the store as on disk: results equal bit for bit.
    assert on_store.sql(CARD).to_arrow_table().equals(ctx.sql(CARD).to_arrow_table())
    diff = "SELECT seq_id, pos, diff_norm(base, ft) AS d FROM acts WHERE layer = 1 ORDER BY seq_id, pos"
    assert on_store.sql(diff).to_arrow_table().equals(ctx.sql(diff).to_arrow_table())
    # The preprocessed tables (other tests train dictionaries into the disk cache).
    info = ("SELECT table_name, organism, layer, rows FROM cache_info() WHERE table_name IN "
            "('activations', 'tokens', 'sequences', 'vocab', 'logit_diff') ORDER BY table_name, organism, layer")
    assert diffsql.sql(info, s3_store).equals(diffsql.sql(info, cache))
    # A method run from Python reads the store and writes the same statistics as from disk.
    for where, name in [(s3_store, "store"), (cache, "disk")]:
        diffsql.run(organism="caps", pipeline__mode="diffing", cache_dir=where, results_dir=tmp_path / name,
                    **{"diffing/method": "kl"}, project_root=ROOT, progress=False)
    stats = [pq.read_table(tmp_path / n / "shakespeare/caps/kl/token_stats.parquet") for n in ("store", "disk")]
    assert stats[0].num_rows >= 1 and stats[0].equals(stats[1])
