"""Check the built docs in headless Chromium, as a reader would see them.

Serves the built site (``docs/_build/html``) on 127.0.0.1 with Python's
``http.server``, opens the landing page, a user-guide page with formulas, an
API page and gallery pages in headless Chromium (through chromedriver and
selenium; Selenium Manager is never used, so nothing is downloaded), and
asserts on each page:

* every request the page makes stays on the local server (``data:`` and
  ``blob:`` URLs aside): no CDN, fonts or analytics from outside;
* no request fails or answers an HTTP error (a missing image, script, font);
* every image is loaded and decoded (``img.complete && naturalWidth > 0``);
* and per page what it is for: the estimator cards' thumbnails, formulas
  typeset by MathJax (``mjx-container`` in every math element, no TeX error),
  "Examples using" thumbnails on the API page, the gallery's figures.

Run after the docs build::

    python3 tools/check_docs_browser.py

``--screenshots DIR`` also saves what a reader sees first (1280x1000) and the
whole page of each. Exits 1 with one ``FAIL`` line per failed check.
"""

import argparse
import base64
import contextlib
import functools
import http.server
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# flags for a headless run that sends nothing of its own to the network
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    # a name outside the local server never resolves: a stray request is
    # still recorded (and failed by the check) but cannot hang the page
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)

# the browser's own pages, whose requests are not the site's
BROWSER_PAGES = ("chrome://", "chrome-untrusted://", "chrome-search://", "devtools://")

# (page, what it must show); the checks are in PAGE_CHECKS below
PAGES = (
    ("index.html", "landing"),
    ("user_guide/embedding.html", "math"),
    ("user_guide/bounds.html", "math"),
    ("generated/skpatch.PatchDictionaryEmbedding.html", "api"),
    ("auto_examples/index.html", "gallery_index"),
    ("auto_examples/plot_embedding_digits.html", "gallery_example"),
)

IMAGES_JS = """
return Array.from(document.images).map(img => ({
    src: img.currentSrc || img.src,
    complete: img.complete,
    width: img.naturalWidth,
    classes: img.className,
    inCard: img.closest('.sd-card') !== null,
    inMinigallery: img.closest('.sphx-glr-thumbnails') !== null,
}));
"""

MATH_JS = """
const maths = Array.from(document.querySelectorAll('.math'));
return {
    math: maths.length,
    typeset: maths.filter(m => m.querySelector('mjx-container') !== null).length,
    containers: document.querySelectorAll('mjx-container').length,
    errors: document.querySelectorAll('mjx-merror').length,
    // a display formula wider than the text column is cut off for the reader
    overflowing: Array.from(document.querySelectorAll('mjx-container[display="true"]'))
        .filter(c => {
            const m = c.querySelector('mjx-math');
            return m && m.getBoundingClientRect().width > c.getBoundingClientRect().width + 1;
        }).length,
};
"""

# resolves once MathJax has typeset the page (or at once if it is absent)
MATHJAX_READY_JS = """
const done = arguments[arguments.length - 1];
if (!window.MathJax || !MathJax.startup || !MathJax.startup.promise) {
    done(false);
} else {
    MathJax.startup.promise.then(() => done(true), () => done(false));
}
"""


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@contextlib.contextmanager
def serve(directory):
    """Serve ``directory`` on 127.0.0.1 (a free port); yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def is_local(url, base):
    """Whether a request URL stays inside the served site."""
    return url.startswith(base) or url.split(":", 1)[0] in {"data", "blob", "about"}


@contextlib.contextmanager
def chromium(binary="/usr/bin/chromium", driver="/usr/bin/chromedriver"):
    """A headless Chromium under chromedriver, with the network log on."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (binary, driver):
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"{path} not found: apt-get install -y chromium chromium-driver"
            )
    profile = tempfile.mkdtemp(prefix="skpatch-docs-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument("--window-size=1280,1000")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    # an explicit driver path: Selenium Manager is not run, nothing is fetched
    service = Service(executable_path=driver)
    browser = webdriver.Chrome(service=service, options=options)
    try:
        browser.set_page_load_timeout(30)
        browser.set_script_timeout(30)
        browser.get("about:blank")  # leave the start page before the log is read
        yield browser
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)


def network_events(browser):
    """Requests, HTTP errors and failed loads since the last call.

    The browser's own pages (its start page, ``chrome://``) are not the
    site's: their requests are left out; everything a page of the site or a
    frame in it asks for counts.
    """
    requests, responses, failures = {}, [], []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        method, params = message["method"], message.get("params", {})
        if method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            if not params.get("documentURL", url).startswith(BROWSER_PAGES):
                requests[params["requestId"]] = url
        elif method == "Network.responseReceived":
            responses.append((params["response"]["url"], params["response"]["status"]))
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            failures.append((params["requestId"], params.get("errorText", "")))
    failed = [(requests[rid], text) for rid, text in failures if rid in requests]
    errors = [(url, status) for url, status in responses if status >= 400]
    return list(requests.values()), errors, failed


def wait_for_images(browser, timeout=15):
    """Scroll lazy images into view and wait until every image has settled."""
    browser.execute_script(
        "document.querySelectorAll('img[loading=lazy]').forEach(i => i.loading = 'eager');"
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        images = browser.execute_script(IMAGES_JS)
        if all(image["complete"] for image in images):
            return images
        time.sleep(0.1)
    return browser.execute_script(IMAGES_JS)


def check_landing(browser, images):
    problems = []
    cards = [image for image in images if image["inCard"]]
    if len(cards) < 8:
        problems.append(f"{len(cards)} thumbnails on estimator cards, expected 8")
    tabs = browser.execute_script("return document.querySelectorAll('.sd-tab-set').length")
    if tabs < 1:
        problems.append("no install tabs")
    blocks, buttons = browser.execute_script(
        "return [document.querySelectorAll('div.highlight').length,"
        " document.querySelectorAll('div.highlight button.copybtn').length]")
    if blocks == 0 or buttons < blocks:
        problems.append(f"{blocks - buttons} of {blocks} code blocks without a copy button")
    return problems


def check_math(browser, images):
    if not browser.execute_async_script(MATHJAX_READY_JS):
        return ["MathJax did not load or did not finish"]
    math = browser.execute_script(MATH_JS)
    problems = []
    if math["math"] == 0:
        problems.append("no math on the page")
    if math["typeset"] < math["math"]:
        problems.append(f"{math['math'] - math['typeset']} of {math['math']} formulas not typeset")
    if math["errors"]:
        problems.append(f"{math['errors']} MathJax errors (mjx-merror)")
    if math["overflowing"]:
        problems.append(f"{math['overflowing']} display formulas wider than the text column")
    return problems


def check_api(browser, images):
    problems = check_math(browser, images) if browser.execute_script(
        "return document.querySelectorAll('.math').length") else []
    heading = browser.execute_script(
        "return Array.from(document.querySelectorAll('p.rubric, h2, h3'))"
        ".some(h => h.textContent.startsWith('Examples using'))"
    )
    if not heading:
        problems.append("no 'Examples using' section")
    if not [image for image in images if image["inMinigallery"]]:
        problems.append("no example thumbnail in 'Examples using'")
    return problems


def check_gallery_index(browser, images):
    thumbs = [image for image in images if "sphx_glr" in image["src"] and "_thumb" in image["src"]]
    if len(thumbs) < 5:
        return [f"{len(thumbs)} example thumbnails on the gallery index"]
    return []


def check_gallery_example(browser, images):
    figures = [image for image in images if "sphx-glr-single-img" in image["classes"]
               or "sphx-glr-multi-img" in image["classes"]]
    return [] if figures else ["no figure on the example page"]


PAGE_CHECKS = {
    "landing": check_landing,
    "math": check_math,
    "api": check_api,
    "gallery_index": check_gallery_index,
    "gallery_example": check_gallery_example,
}


def check_page(browser, base, page, kind, screenshots=None):
    """Open one page and return the list of problems a reader would meet."""
    network_events(browser)  # drop what earlier pages left in the log
    browser.get(base + page)
    images = wait_for_images(browser)
    problems = PAGE_CHECKS[kind](browser, images) if kind else []
    # anything the checks above triggered (MathJax fonts) is in the log now
    time.sleep(0.3)
    requests, errors, failed = network_events(browser)
    outside = sorted({url for url in requests if not is_local(url, base)})
    problems += [f"request outside the site: {url}" for url in outside]
    problems += [f"HTTP {status}: {url}" for url, status in errors]
    problems += [f"failed to load ({text}): {url}" for url, text in failed
                 if is_local(url, base)]
    problems += [f"image not loaded: {image['src']}" for image in images
                 if not (image["complete"] and image["width"] > 0)]
    if screenshots is not None:
        save_screenshots(browser, Path(screenshots), page)
    return problems, len(requests)


def save_screenshots(browser, directory, page):
    """What a reader sees first, the whole page, and on API pages the examples."""
    directory.mkdir(parents=True, exist_ok=True)
    name = page.replace("/", "_").removesuffix(".html")
    browser.save_screenshot(str(directory / f"{name}.png"))
    width, height = browser.execute_script(
        "return [document.documentElement.clientWidth,"
        " document.documentElement.scrollHeight]")
    # Chromium captures at most 16384 pixels in one image
    shot = browser.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": width, "height": min(height, 16000), "scale": 1},
    })
    (directory / f"{name}_full.png").write_bytes(base64.b64decode(shot["data"]))
    heading = browser.execute_script(
        "const h = Array.from(document.querySelectorAll('p.rubric, h2, h3'))"
        ".find(h => h.textContent.startsWith('Examples using'));"
        "if (h) { h.scrollIntoView(); } return h !== undefined;")
    if heading:
        time.sleep(0.2)
        browser.save_screenshot(str(directory / f"{name}_examples.png"))
        browser.execute_script("window.scrollTo(0, 0)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--html", default=str(ROOT / "docs" / "_build" / "html"),
                        help="the built site (default: docs/_build/html)")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    parser.add_argument("--screenshots", default=None,
                        help="save viewport and full-page screenshots here")
    args = parser.parse_args(argv)

    html = Path(args.html)
    missing = [page for page, _ in PAGES if not (html / page).is_file()]
    if missing:
        print(f"FAIL pages missing from {html} (build the docs first): {', '.join(missing)}")
        return 1
    # selenium must not look for a driver online; the explicit path skips it
    os.environ.setdefault("SE_OFFLINE", "true")
    start = time.monotonic()
    failures = 0
    with serve(html) as base, chromium(args.chromium, args.chromedriver) as browser:
        for page, kind in PAGES:
            problems, n_requests = check_page(browser, base, page, kind, args.screenshots)
            for problem in problems:
                print(f"FAIL {page}: {problem}")
            if not problems:
                print(f"ok   {page} ({kind}; {n_requests} requests, all local)")
            failures += len(problems)
    print(f"{len(PAGES)} pages checked in {time.monotonic() - start:.1f} s: "
          + ("all good" if not failures else f"{failures} problems"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
