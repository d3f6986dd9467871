"""The quick start from Python, as a notebook would run it: preprocess the bundled pair, run two methods, query.

    python python/examples/quickstart.py [CACHE] [--small]     (from the repository root)
"""

import sys
import tempfile

import numpy as np

import diffsql

args = [a for a in sys.argv[1:] if not a.startswith("--")]
cache = args[0] if args else "cache"
small = ["dataset=[shakespeare_pretrain]", "preprocessing.max_samples=16"] if "--small" in sys.argv else []
results = tempfile.mkdtemp() if "--small" in sys.argv else "results"

for organism in ["caps", "roman_concrete"]:
    diffsql.preprocess(f"organism={organism}", f"cache_dir={cache}", *small)
    for method in ["kl", "normdiff"]:
        diffsql.run(f"organism={organism}", f"diffing/method={method}", "pipeline.mode=diffing",
                    f"cache_dir={cache}", f"results_dir={results}", *small)

ctx = diffsql.connect(cache)
print(ctx.sql("SELECT organism, layer, normdiff(base, ft) AS normdiff FROM acts "
              "GROUP BY organism, layer ORDER BY organism, layer").to_pandas())
diff = diffsql.vectors(ctx.sql("SELECT vec_sub(ft, base) AS d FROM acts WHERE organism = 'caps' AND layer = 2"), "d")
print("caps, layer 2: mean ‖ft − base‖ =", float(np.linalg.norm(diff, axis=1).mean()))
print(ctx.sql("SELECT token, round(prob, 3) AS prob FROM logit_lens((SELECT mean_diff(base, ft) FROM acts "
              "WHERE organism = 'caps' AND layer = 1 AND pos BETWEEN 1 AND 4), 'shakespeare', 8) "
              "WHERE sign = '+' ORDER BY rank").to_pandas())
print(ctx.query("kl/03_top_tokens", organism="caps", top_n=5).to_pandas()[["token", "kl", "context"]])
print("results in", results)
