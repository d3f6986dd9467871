"""The dashboard in a real browser (Debian's Chromium through Playwright) on the bundled pair's results."""

import csv
import io
import json
import pathlib
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from conftest import Server, diffsql, screenshot

MODEL = "shakespeare"
CARD_QUERY = (
    "SELECT organism, layer, normdiff(base, ft) AS normdiff FROM acts "
    "GROUP BY organism, layer ORDER BY organism, layer"
)


def get(url):
    """(status, body) of a GET; HTTP errors are answers too."""
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def sql_csv(data, query):
    out = diffsql("sql", "--format", "csv", "-c", query, data=data).stdout
    return list(csv.DictReader(io.StringIO(out)))


def all_pages(server, data):
    """Every page of the dashboard on the bundled results."""
    pages = ["", "tokens", "sql", "chat", f"sql?q={urllib.parse.quote(CARD_QUERY)}"]
    for organism in ["caps", "roman_concrete"]:
        for method in ["kl", "normdiff", "adl", "diff_mining"]:
            pages.append(f"results/{MODEL}/{organism}/{method}")
        pages.append(f"results/{MODEL}/{organism}/kl/table/top_tokens?sort=kl&desc=1")
        pages.append(f"tokens?organism={organism}")
    first = sql_csv(data, "SELECT dataset, seq_id FROM sequences ORDER BY dataset, seq_id LIMIT 1")[0]
    pages.append(f"tokens?organism=caps&dataset={first['dataset']}&seq={first['seq_id']}")
    pages.append(f"tokens?organism=caps&dataset={first['dataset']}&seq={first['seq_id']}&color=normdiff&layer=1")
    return [server.url + p for p in pages]


def test_every_page_loads_without_console_errors(server, data, page):
    for url in all_pages(server, data):
        response = page.goto(url)
        page.wait_for_load_state("networkidle")
        assert response.status == 200, f"{url}: {response.status}"
        assert not page.problems, f"{url}: {page.problems}"
        assert page.locator("nav a.brand").inner_text() == "diffsql"
    # Charts are drawn by uPlot from the method config's line plots.
    page.goto(server.url + f"results/{MODEL}/caps/normdiff")
    assert page.locator(".chart .uplot").count() >= 2
    screenshot(page, "normdiff")
    page.goto(server.url + f"results/{MODEL}/caps/diff_mining")
    assert page.locator(".bars .bar-row").count() >= 10
    screenshot(page, "diff_mining")
    page.goto(server.url + f"results/{MODEL}/caps/kl")
    assert page.locator(".chart .uplot").count() == 1
    assert not page.problems


def test_overview_lists_the_cache_and_every_result(server, page):
    page.goto(server.url)
    text = page.locator("main").inner_text()
    for what in ["Model shakespeare", "base, caps, roman_concrete", "shakespeare_pretrain"]:
        assert what in text
    rows = page.locator("#results tbody tr")
    assert rows.count() == 8
    methods = sorted(rows.nth(i).locator("td").nth(2).inner_text() for i in range(8))
    assert methods == sorted(["adl", "diff_mining", "kl", "normdiff"] * 2)
    screenshot(page, "overview")


def column(page, name):
    headers = [h.strip(" ▲▼") for h in page.locator("table.grid thead th").all_inner_texts()]
    i = headers.index(name)
    return page.locator(f"table.grid tbody tr td:nth-child({i + 1})").all_inner_texts()


def test_the_kl_table_sorts(server, page):
    page.goto(server.url + f"results/{MODEL}/caps/kl/table/top_tokens")
    page.click("th a.sort:text-is('kl')")
    page.wait_for_load_state("networkidle")
    ascending = [float(v) for v in column(page, "kl")]
    assert len(ascending) == 50
    assert ascending == sorted(ascending) and ascending[0] < ascending[-1]
    page.click("th a.sort:has-text('kl')")
    page.wait_for_load_state("networkidle")
    descending = [float(v) for v in column(page, "kl")]
    assert descending == sorted(descending, reverse=True)
    assert descending[0] > ascending[-1]
    page.click("#next")
    assert [float(v) for v in column(page, "kl")][0] <= descending[-1]
    assert not page.problems


def test_a_top_token_shows_its_own_context(server, data, page):
    page.goto(server.url + f"results/{MODEL}/caps/kl/table/top_tokens?sort=rank")
    first = page.locator("table.grid tbody tr").first
    token = column(page, "token")[0]
    target = first.locator(".tok.target")
    assert target.count() == 1
    assert target.inner_text() == token
    # The context is the cached sequence around that position, read independently with the CLI.
    dataset, seq_id, pos = column(page, "dataset")[0], column(page, "seq_id")[0], int(column(page, "pos")[0])
    expected = sql_csv(
        data,
        f"SELECT pos, token, kl FROM tokens WHERE model = '{MODEL}' AND organism = 'caps' AND dataset = '{dataset}' "
        f"AND seq_id = {seq_id} AND pos BETWEEN {max(pos - 12, 0)} AND {pos + 12} ORDER BY pos",
    )
    shown = first.locator(".tok")
    assert shown.count() == len(expected)
    assert [t.replace("↵", "\n") for t in shown.all_inner_texts()] == [r["token"] for r in expected]
    # The target is the darkest (its KL is the largest of the table), and hover shows both models' candidates.
    style = target.get_attribute("style")
    assert "--a: 1" in style, style
    tip = target.get_attribute("title")
    assert tip.startswith(f"pos {pos}") and "ft next:" in tip and "base next:" in tip
    ft_next = column(page, "ft_next")[0].split("|")[0].strip()
    assert ft_next in tip.split("\n")[1]
    screenshot(page, "kl_top_tokens")


def test_the_token_browser_shows_a_tokens_statistics(server, data, page):
    top = sql_csv(
        data,
        f"SELECT dataset, seq_id, pos, kl FROM tokens WHERE model = '{MODEL}' AND organism = 'caps' "
        "ORDER BY kl DESC, seq_id, pos LIMIT 1",
    )[0]
    page.goto(
        server.url + f"tokens?organism=caps&dataset={top['dataset']}&seq={top['seq_id']}&focus={top['pos']}"
    )
    page.click(f"#sequence .tok[data-pos='{top['pos']}']")
    page.wait_for_selector("#token-detail h3")
    detail = page.locator("#token-detail").inner_text()
    assert f"at position {top['pos']}" in detail
    assert f"KL(ft ‖ base) {float(top['kl']):.4g}"[:18] in detail
    assert "organism's next tokens" in detail and "base model's next tokens" in detail
    assert not page.problems
    screenshot(page, "token_browser")
    page.goto(server.url + "tokens?organism=caps")
    kls = [float(v) for v in column(page, "mean_kl")]
    assert kls == sorted(kls, reverse=True)
    screenshot(page, "sequences")


def test_the_console_runs_the_card_query_and_refuses_writes(server, data, page, tmp_path):
    page.goto(server.url + "sql")
    page.fill("#q", CARD_QUERY)
    page.click("#run")
    page.wait_for_load_state("networkidle")
    expected = sql_csv(data, CARD_QUERY)
    assert column(page, "organism") == [r["organism"] for r in expected]
    shown = [float(v) for v in column(page, "normdiff")]
    assert shown == pytest.approx([float(r["normdiff"]) for r in expected], rel=1e-3)
    screenshot(page, "sql")
    target = tmp_path / "leak.csv"
    page.fill("#q", f"COPY (SELECT * FROM vocab) TO '{target}'")
    page.click("#run")
    assert "read-only" in page.locator("#sql-error").inner_text()
    assert not target.exists()
    page.fill("#q", f"CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '{tmp_path}'")
    page.click("#run")
    assert "not allowed" in page.locator("#sql-error").inner_text()
    page.fill("#q", "SELEC 1")
    page.click("#run")
    assert "SELEC" in page.locator("#sql-error").inner_text()
    assert not page.problems


def test_chat_streams_both_models_as_the_cli_generates(server, page):
    prompt = "ROMEO. What light"
    cli = diffsql("generate", "organism=caps", "--prompt", prompt, "--max-new-tokens", "12").stdout
    lines = [l.strip() for l in cli.splitlines()]
    base = json.loads(lines[1].split(None, 1)[1])
    organism = json.loads(lines[2].split(None, 1)[1])
    page.goto(server.url + "chat")
    page.select_option("#organism", "caps")
    page.fill("#max-tokens", "12")
    page.fill("#prompt", prompt)
    page.click("#send")
    page.wait_for_function(
        "['base','organism'].every(s => document.getElementById('rate-' + s).textContent.includes('tokens/s'))",
        timeout=120_000,
    )
    assert page.locator("#out-base").inner_text() == base
    assert page.locator("#out-organism").inner_text() == organism
    assert base != organism
    assert not page.problems
    screenshot(page, "chat")


def test_a_missing_results_folder_is_a_message_not_a_crash(data, page, tmp_path):
    s = Server(data, results=tmp_path / "absent")
    try:
        page.goto(s.url)
        assert "No results in" in page.locator("#no-results").inner_text()
        response = page.goto(s.url + f"results/{MODEL}/caps/kl")
        assert response.status == 404
        assert "no results for model" in page.locator("#error").inner_text()
        assert s.alive()
    finally:
        s.stop()


def test_bad_requests_get_clear_answers_and_the_server_stays_up(server):
    cases = [
        (f"results/{MODEL}/nosuch/kl", 404, "no results for organism"),
        (f"results/{MODEL}/caps/nosuch", 404, "no results of method"),
        (f"results/{MODEL}/caps/kl/table/nosuch", 404, "has no table"),
        (f"results/{MODEL}/caps/kl/table/top_tokens?sort=nosuch", 400, "no column"),
        (f"results/{MODEL}/caps/kl/table/top_tokens?page=99999", 400, "past the end"),
        (f"results/{MODEL}/caps/kl/table/top_tokens?page=-1", 400, ""),
        (f"results/{MODEL}/caps/kl?color=normdiff", 400, "needs a layer"),
        ("tokens?organism=nosuch", 404, "no cached tokens of organism"),
        ("tokens?organism=caps&dataset=nosuch&seq=0", 404, "no sequence 0"),
        ("tokens?sort=evil;DROP", 400, "cannot sort"),
        ("results/../../etc/passwd", 404, ""),
        ("assets/../Cargo.toml", 404, ""),
        ("nowhere", 404, "there is no page"),
    ]
    for path, status, words in cases:
        code, body = get(server.url + path)
        assert code == status, f"{path}: {code} {body[:300]}"
        assert words in body, f"{path}: {body[:500]}"
    code, body = get(server.url + "sql?q=" + urllib.parse.quote("SELECT * FROM nosuch"))
    assert code == 200 and "nosuch" in body and 'id="sql-error"' in body
    code, body = get(server.url + "chat/stream?organism=nosuch&prompt=hi")
    assert "event: error" in body and "unknown organism" in body
    assert server.alive()


def test_twenty_concurrent_page_loads(server):
    urls = [server.url + p for p in ["", f"results/{MODEL}/caps/kl", "tokens?organism=caps", "sql"]] * 5
    answers = [None] * len(urls)

    def load(i):
        answers[i] = get(urls[i])[0]

    threads = [threading.Thread(target=load, args=(i,)) for i in range(len(urls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [200] * 20
    assert server.alive()


def test_results_written_while_the_server_runs(data, tmp_path):
    results = tmp_path / "results"
    s = Server(data, results=results)
    try:
        assert "No results in" in get(s.url)[1]
        # A method half-written (no summary.json yet), then finished by copying a real one in.
        half = results / MODEL / "caps" / "kl"
        half.mkdir(parents=True)
        code, body = get(s.url)
        assert code == 200 and "no summary.json yet" in body
        assert get(s.url + f"results/{MODEL}/caps/kl")[0] == 200
        source = data / "results" / MODEL / "caps" / "kl"
        for f in source.iterdir():
            shutil.copy(f, half / f.name)
        code, body = get(s.url + f"results/{MODEL}/caps/kl/table/top_tokens")
        assert code == 200 and "concrete" in body
        # A rerun of a method while pages are read.
        stop = threading.Event()
        codes = []

        def read():
            while not stop.is_set():
                codes.append(get(s.url + f"results/{MODEL}/caps/kl")[0])

        reader = threading.Thread(target=read)
        reader.start()
        diffsql("run", "pipeline.mode=diffing", "organism=caps", "diffing/method=kl", f"results_dir={results}", data=data)
        stop.set()
        reader.join()
        assert codes and set(codes) <= {200}, codes
        assert s.alive()
    finally:
        s.stop()


def test_a_very_long_sequence_is_paged(tmp_path, page):
    data = tmp_path
    synth = diffsql(
        "synth", "--model", "long", "--tokens", "20000", "--seq-len", "20000", "--d-model", "8", "--layers", "0",
        data=data,
    )
    assert synth.returncode == 0
    (data / "results").mkdir()
    s = Server(data)
    try:
        dataset = sql_csv(data, "SELECT dataset FROM sequences LIMIT 1")[0]["dataset"]
        started = time.time()
        response = page.goto(s.url + f"tokens?model=long&organism=caps&dataset={dataset}&seq=0&focus=19999")
        assert response.status == 200
        assert time.time() - started < 10
        assert page.locator("#sequence .tok").count() == 20000 - 19968  # the last page of 512
        assert page.locator("#sequence .tok.target").get_attribute("data-pos") == "19999"
        page.click("#prev")
        assert page.locator("#sequence .tok").count() == 512
        assert not page.problems
    finally:
        s.stop()
