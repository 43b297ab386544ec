"""tools/check_docs_browser.py fails the pages a reader would find broken.

The browser tests run a headless Chromium on tiny local pages (a few seconds)
and skip where Chromium, chromedriver or selenium is absent.
"""

import importlib.util
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "check_docs_browser", ROOT / "tools" / "check_docs_browser.py"
)
check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check)

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
needs_browser = pytest.mark.skipif(
    not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file())
    or importlib.util.find_spec("selenium") is None,
    reason="needs /usr/bin/chromium, /usr/bin/chromedriver and selenium",
)

# the pages name an icon, as the docs do: a browser asks for /favicon.ico otherwise
HEAD = '<head><link rel="icon" href="data:,"></head>'
# a 1x1 PNG
PIXEL = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d4944415478da63f8ffff3f0005fe02fea7d6a4e80000000049454e44ae426082"
)


def test_is_local():
    base = "http://127.0.0.1:8000/"
    assert check.is_local(base + "_static/x.js", base)
    assert check.is_local("data:image/png;base64,AAAA", base)
    assert not check.is_local("https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js", base)
    assert not check.is_local("http://127.0.0.1:9999/other-site.js", base)


def test_missing_build_is_reported(tmp_path, capsys):
    assert check.main(["--html", str(tmp_path)]) == 1
    assert "build the docs first" in capsys.readouterr().out


@pytest.fixture(scope="module")
def browser():
    with check.chromium(CHROMIUM, CHROMEDRIVER) as browser:
        yield browser


@needs_browser
def test_outside_requests_and_broken_images_fail(tmp_path, browser):
    (tmp_path / "pixel.png").write_bytes(PIXEL)
    (tmp_path / "good.html").write_text(f'<html>{HEAD}<body><img src="pixel.png"></body></html>')
    (tmp_path / "bad.html").write_text(
        f'<html>{HEAD}<body><img src="pixel.png"><img src="missing.png">'
        '<img src="https://cdn.example.org/logo.png">'
        '<iframe src="https://embed.example.org/"></iframe>'
        '<script src="https://cdn.example.org/lib.js"></script></body></html>'
    )
    with check.serve(tmp_path) as base:
        problems, n_requests = check.check_page(browser, base, "good.html", None)
        assert problems == [] and n_requests >= 2
        problems, _ = check.check_page(browser, base, "bad.html", None)
    text = "\n".join(problems)
    assert "request outside the site: https://cdn.example.org/logo.png" in text
    assert "request outside the site: https://cdn.example.org/lib.js" in text
    assert "request outside the site: https://embed.example.org/" in text
    assert f"HTTP 404: {base}missing.png" in text
    assert f"image not loaded: {base}missing.png" in text
    assert "pixel.png" not in text


@needs_browser
def test_math_must_be_typeset_and_fit(tmp_path, browser):
    spec = importlib.util.find_spec("sphinx-mathjax-offline")
    if spec is None:
        pytest.skip("needs sphinx-mathjax-offline (the docs extra)")
    shutil.copytree(Path(spec.origin).parent / "static" / "mathjax", tmp_path / "mathjax")

    def page(name, body):
        (tmp_path / name).write_text(
            '<html><head><link rel="icon" href="data:,">'
            '<script defer src="mathjax/tex-chtml.js"></script></head>'
            f'<body><div style="width: 300px">{body}</div></body></html>'
        )

    page("good.html", r'<span class="math">\(s = 1 / \sqrt{\lambda + \epsilon}\)</span>')
    page("error.html", r'<span class="math">\(\frac{1}\)</span>')  # a missing argument
    wide = " + ".join(rf"\frac{{x_{i}}}{{y_{i}}}" for i in range(40))
    page("wide.html", rf'<div class="math">\[{wide}\]</div>')
    page("nomath.html", "<p>no formula here</p>")
    # a formula, but MathJax is not served (as when it is fetched from a CDN offline)
    (tmp_path / "unloaded.html").write_text(
        f'<html>{HEAD}<body><span class="math">\\(x\\)</span></body></html>')
    with check.serve(tmp_path) as base:
        assert check.check_page(browser, base, "good.html", "math")[0] == []
        error = check.check_page(browser, base, "error.html", "math")[0]
        wide = check.check_page(browser, base, "wide.html", "math")[0]
        missing = check.check_page(browser, base, "nomath.html", "math")[0]
        unloaded = check.check_page(browser, base, "unloaded.html", "math")[0]
    assert error == ["1 MathJax errors (mjx-merror)"]
    assert wide == ["1 display formulas wider than the text column"]
    assert missing == ["no math on the page"]
    assert unloaded == ["MathJax did not load or did not finish"]
