"""report.html: contents, escaping, self-containment, size/speed at GSM8K scale, the optional
matplotlib, `harness report RUN`, and a real headless Chromium render with no console errors.

The browser test drives Debian's chromium over the DevTools protocol on a pipe
(--remote-debugging-pipe: JSON messages separated by NUL bytes on fds 3 and 4), so it needs no
websocket client package. It is skipped, with the reason shown, only when /usr/bin/chromium is
absent (`apt-get install -y chromium`).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from tests.test_compare import make_run

CHROMIUM = "/usr/bin/chromium"
NASTY = 'Ignore this: <script>alert("x")</script></pre></details><img src=x onerror=alert(1)> & "quotes" \u00e9\u4e2d'


def _nasty_run(path: Path, P: int = 40, n: int = 4, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    correct = rng.random((P, n)) < 0.5
    invalid = rng.random((P, n)) < 0.15
    texts = [[f"Step by step for {i}.{j}. {NASTY} " + ("long " * 2000 if (i, j) == (1, 0) else "") for j in range(n)]
             for i in range(P)]
    qs = [f"How many apples? {NASTY}", "A plain question with\nnewlines in it?"]
    return make_run(path, correct, invalid=invalid, texts=texts, questions=qs, max_tokens=380, seed=seed)


@pytest.fixture(scope="module")
def gsm8k_scale_run(tmp_path_factory):
    """1319 problems × 16 samples with real GSM8K questions when the data is there."""
    from tests import tiny

    qs = None
    test_file = tiny.GSM8K_DIR / "test.jsonl"
    if test_file.exists():
        qs = [json.loads(line)["question"] for line in test_file.read_text().splitlines() if line.strip()]
    rng = np.random.default_rng(0)
    P, n = 1319, 16
    p = rng.beta(2, 2, size=P)
    correct = rng.random((P, n)) < p[:, None]
    invalid = rng.random((P, n)) < 0.05
    toks = rng.integers(40, 512, size=(P, n))
    words = np.array("Let us compute the total number of eggs and then multiply by the price per egg so".split())
    texts = [[" ".join(rng.choice(words, size=int(t * 0.8))) + f"\n#### {10 + i}" for t in row] for i, row in enumerate(toks)]
    return make_run(tmp_path_factory.mktemp("gsm8k-scale"), correct, invalid=invalid, gen_tokens=toks, texts=texts,
                    questions=qs, max_tokens=500)


def _results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


# ----------------------------------------------------------------------------- contents


def test_report_contents_and_escaping(tmp_path):
    from harness.reporting import html as report_html

    run = _nasty_run(tmp_path / "run")
    out = report_html.write(run, _results(run))
    html = out.read_text()
    # model and dataset text is escaped: the injected markup never appears raw
    assert "<script>alert" not in html and "onerror=alert" not in html.replace("onerror=alert(1)&gt;", "")
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert html.count("<script>") == 1  # only the page's own filter script
    # self-contained: nothing is fetched from anywhere
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "<link rel=\"stylesheet\"" not in html
    imgs = re.findall(r'<img src="([^"]+)"', html)
    assert len(imgs) == 3 and all(u.startswith("data:image/png;base64,") for u in imgs)
    # sections
    for title in ("Results", "Plots", "Extractor disagreement", "Problems"):
        assert f">{title}</h2>" in html
    assert html.count('<details class="prob"') == 40
    assert "[truncated: " in html  # the 10,000-character sample
    # the results table shows every metric with its CI
    res = _results(run)
    acc = res["metrics"]["strict"]["acc"]
    ci = res["metrics"]["strict"]["acc_ci"]
    assert f"<td>strict</td><td>acc</td><td class=\"num\">{acc:.4f}</td>" in html
    assert f"[{ci[0]:.4f}, {ci[1]:.4f}]" in html


def test_disagreement_counts(tmp_path):
    from harness.reporting import html as report_html
    from harness.runs.rundir import read_samples

    run = _nasty_run(tmp_path / "run", P=30, n=5, seed=3)
    rows = read_samples(run / "samples.jsonl")
    d = report_html.disagreement(rows, ["strict", "flexible"])
    # in make_run, strict and flexible differ exactly where strict is invalid (flexible extracts)
    inv = [r for r in rows if r["keys"]["strict"] is None]
    assert d["pairs"][0]["samples"] == len(inv) == d["pairs"][0]["one_invalid"] == d["invalid"]["strict"]
    assert d["pairs"][0]["problems"] == len({r["doc_id"] for r in inv})
    assert d["pairs"][0]["correct_samples"] == sum(r["scores"]["flexible"] == 1.0 for r in inv)
    assert d["invalid"]["flexible"] == 0 and d["all_agree"] == len(rows) - len(inv)


def test_report_without_matplotlib(tmp_path, monkeypatch):
    from harness.reporting import html as report_html

    run = _nasty_run(tmp_path / "run", P=5)
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    html = report_html.write(run, _results(run)).read_text()
    assert "matplotlib is not installed" in html and "<img" not in html
    assert html.count('<details class="prob"') == 5


def test_harness_report_cli_rebuilds(tmp_path, capsys):
    run = _nasty_run(tmp_path / "run", P=6)
    for name in ("report.md", "report.html"):
        (run / name).unlink(missing_ok=True)
    assert main(["report", str(run)]) == 0
    assert (run / "report.md").read_text().startswith("# gsm8k-cot")
    assert "<!DOCTYPE html>" in (run / "report.html").read_text()
    assert "report.html" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no results.json" in capsys.readouterr().err


def test_report_fast_and_small_at_gsm8k_scale(gsm8k_scale_run):
    from harness.reporting import html as report_html

    t0 = time.perf_counter()
    out = report_html.write(gsm8k_scale_run, _results(gsm8k_scale_run))
    elapsed = time.perf_counter() - t0
    size = out.stat().st_size
    print(f"report.html for 1319 x 16: {elapsed:.2f} s, {size / 1e6:.2f} MB")
    assert elapsed < 20, f"report.html took {elapsed:.1f} s"  # ~2.5 s on a quiet 2-core machine
    assert size < 10e6, f"report.html is {size / 1e6:.1f} MB"
    html = out.read_text()
    assert html.count('<details class="prob"') == 1319
    assert html.count('<details class="sample">') <= 2 * 1319


# ----------------------------------------------------------------------------- real browser


class _Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (fds 3 and 4)."""

    def __init__(self, timeout: float = 60.0):
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        self.timeout = timeout
        cmd_r, self._cmd_w = os.pipe()  # we write commands; chromium reads fd 3
        self._out_r, out_w = os.pipe()  # chromium writes fd 4; we read
        args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={self.profile}", "--remote-debugging-pipe",
                "about:blank"]
        # move the child's ends above 9 first, so that the shell's redirections cannot clobber them
        hi_r, hi_w = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10), fcntl.fcntl(out_w, fcntl.F_DUPFD, 10)
        os.close(cmd_r)
        os.close(out_w)
        shell = f'exec "$0" "$@" 3<&{hi_r} 4>&{hi_w} {hi_r}<&- {hi_w}>&-'
        try:
            self.proc = subprocess.Popen(["bash", "-c", shell, *args], pass_fds=(hi_r, hi_w),
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        finally:
            os.close(hi_r)
            os.close(hi_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        want = self._id
        while True:
            m = self._read()
            if m.get("id") == want:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})

    def _read(self, deadline: float | None = None) -> dict:
        deadline = deadline or time.monotonic() + self.timeout
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from chromium")
            ready, _, _ = select.select([self._out_r], [], [], left)
            if ready:
                chunk = os.read(self._out_r, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium exited: {self.proc.stderr.read().decode(errors='replace')[-2000:]}")
                self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        m = json.loads(raw)
        if "method" in m:
            self.events.append(m)
        return m

    def wait_event(self, method: str, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        for e in self.events:
            if e["method"] == method:
                return e
        while True:
            m = self._read(deadline)
            if m.get("method") == method:
                return m

    def close(self) -> None:
        try:
            os.write(self._cmd_w, json.dumps({"id": 10**6, "method": "Browser.close", "params": {}}).encode() + b"\0")
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._cmd_w, self._out_r):
            try:
                os.close(fd)
            except OSError:
                pass
        if self.proc.stderr:
            self.proc.stderr.close()
        shutil.rmtree(self.profile, ignore_errors=True)


def _page_errors(events: list[dict]) -> list[str]:
    errs = []
    for e in events:
        m, p = e["method"], e.get("params", {})
        if m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            errs.append(f"exception: {d.get('text')} {(d.get('exception') or {}).get('description', '')}")
        elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning", "assert"):
            errs.append(f"console.{p['type']}: " + " ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") in ("error", "warning"):
            ent = p["entry"]
            errs.append(f"log {ent.get('level')} ({ent.get('source')}): {ent.get('text')} {ent.get('url', '')}")
    return errs


def _render_in_chromium(html_path: Path, script: str) -> tuple[list[str], dict, list[str]]:
    """Load the page, run `script` (an expression returning a JSON string), and return
    (console/exception/log errors, the script's result, URLs the page requested)."""
    browser = _Chromium()
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            browser.send(f"{domain}.enable", session=session)
        browser.events.clear()
        browser.send("Page.navigate", {"url": html_path.resolve().as_uri()}, session=session)
        browser.wait_event("Page.loadEventFired")
        res = browser.send("Runtime.evaluate", {"expression": script, "returnByValue": True, "awaitPromise": True},
                           session=session)
        if "exceptionDetails" in res:
            raise AssertionError(f"test script failed: {res['exceptionDetails']}")
        time.sleep(0.3)  # let late console messages arrive
        browser.send("Runtime.evaluate", {"expression": "1", "returnByValue": True}, session=session)
        urls = [e["params"]["request"]["url"] for e in browser.events if e["method"] == "Network.requestWillBeSent"]
        return _page_errors(browser.events), json.loads(res["result"]["value"]), urls
    finally:
        browser.close()


_INTERACT = """
(async () => {
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const all = document.querySelectorAll("details.prob").length;
  const show = document.getElementById("show");
  const out = {problems: all, images: [...document.images].filter((i) => i.complete && i.naturalWidth > 0).length,
               initial: document.getElementById("shown").textContent};
  show.value = "acc"; show.dispatchEvent(new Event("change"));
  out.acc_visible = [...document.querySelectorAll("details.prob")].filter((d) => !d.hidden).length;
  out.acc_expected = document.querySelectorAll('details.prob[data-acc="0"]').length;
  show.value = "all"; show.dispatchEvent(new Event("change"));
  const search = document.getElementById("search");
  const visible = () => [...document.querySelectorAll("details.prob")].filter((d) => !d.hidden).length;
  search.value = "plain QUESTION"; search.dispatchEvent(new Event("input"));
  await sleep(400);
  out.words_visible = visible();
  search.value = "#3"; search.dispatchEvent(new Event("input"));
  await sleep(400);
  out.search_visible = visible();
  document.getElementById("expand").click();
  out.opened = document.querySelectorAll("details.prob[open]").length;
  document.getElementById("collapse").click();
  search.value = ""; search.dispatchEvent(new Event("input"));
  await sleep(400);
  document.querySelector("details.prob").open = true;
  out.first_text = document.querySelector("details.prob pre.text") ? document.querySelector("details.prob pre.text").textContent : "";
  out.scripts = document.scripts.length;
  return JSON.stringify(out);
})()
"""


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} not installed (apt-get install -y chromium)")
def test_report_renders_in_chromium_without_console_errors(tmp_path):
    from harness.reporting import html as report_html

    run = _nasty_run(tmp_path / "run", P=40, n=4)
    out = report_html.write(run, _results(run))
    errors, info, urls = _render_in_chromium(out, _INTERACT)
    assert errors == [], errors
    assert info["problems"] == 40 and info["images"] == 3 and info["scripts"] == 1
    assert info["initial"] == "40 of 40 shown"
    assert info["acc_visible"] == info["acc_expected"] > 0
    assert info["words_visible"] == 20  # every other question is the plain one
    assert info["search_visible"] == 1 and info["opened"] == 1
    assert '<script>alert("x")</script>' in info["first_text"]  # shown as text, never run
    assert all(u.startswith(("file://", "data:")) for u in urls), urls


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} not installed (apt-get install -y chromium)")
def test_gsm8k_scale_report_renders_in_chromium(gsm8k_scale_run):
    from harness.reporting import html as report_html

    out = gsm8k_scale_run / "report.html"
    if not out.exists():
        report_html.write(gsm8k_scale_run, _results(gsm8k_scale_run))
    t0 = time.perf_counter()
    errors, info, urls = _render_in_chromium(out, _INTERACT)
    print(f"chromium load + interaction for 1319 problems: {time.perf_counter() - t0:.1f} s")
    assert errors == [], errors
    assert info["problems"] == 1319 and info["images"] == 3
    assert info["acc_visible"] == info["acc_expected"]
    assert all(u.startswith(("file://", "data:")) for u in urls), urls


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} not installed (apt-get install -y chromium)")
def test_browser_check_catches_errors(tmp_path):
    """Negative control: the console-error collection above does see errors when there are some."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body>'
                    '<img src="missing.png"><script>console.error("boom"); undefinedFunction();</script></body></html>')
    errors, info, _ = _render_in_chromium(page, 'JSON.stringify({ok: 1})')
    assert info == {"ok": 1}
    text = "\n".join(errors)
    assert "console.error: boom" in text and "undefinedFunction" in text and "missing.png" in text, text
