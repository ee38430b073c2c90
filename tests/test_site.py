"""The published book, tested in a real browser: every page, offline.

The book is built once (or a fresh `_build/html` is reused: one newer than every notebook,
page, config file and `bncourse` module), served on 127.0.0.1 and every page is loaded in
headless Chromium with all other hosts blocked. Each test then checks one property over all
pages and lists every page that fails it.

Needs a Chromium binary (`apt-get install chromium`) and the `playwright` package, which
drives that binary (with a fresh temporary profile) and downloads nothing. Without either,
these tests skip and say why, except when the environment variable CI is set: there a
missing browser fails the run rather than hiding it. Environment knobs:

- BNCOURSE_CHROMIUM: path of the browser, if it is not `chromium` on PATH.
- BNCOURSE_SITE_HTML: check this already built site instead of the repository's book
  (no build, no freshness check, no _toc.yml comparison).

Screenshots of a few key pages land in `_build/screenshots/`.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.parse
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sitecheck  # noqa: E402 - the helper sits next to this file

ROOT = Path(__file__).resolve().parents[1]


def _require_browser() -> str:
    """The Chromium to use; skips (fails under CI) when it or playwright is missing."""
    chromium = sitecheck.find_chromium()
    reason = None
    if chromium is None:
        reason = ("no Chromium found (install it with `apt-get install chromium`, or set "
                  "BNCOURSE_CHROMIUM to the browser's path)")
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError as err:
            reason = f"playwright is not installed ({err}; it is in requirements.txt)"
    if reason is None:
        return chromium
    if os.environ.get("CI"):
        pytest.fail(f"CI is set and {reason}: the browser tests must run in CI", pytrace=False)
    pytest.skip(f"{reason}: skipping the browser tests of the book")


def _repository_url() -> str:
    import yaml

    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf8"))
    return config["repository"]["url"].rstrip("/")


class Site:
    """The served book, with one PageReport per page and the link check."""

    def __init__(self, html_dir: Path, base_url: str, reports: dict[str, sitecheck.PageReport],
                 own_build: bool, screenshots: Path, search: list[str] | None, search_query: str):
        self.html_dir = html_dir
        self.base_url = base_url
        self.reports = reports
        self.own_build = own_build
        self.screenshots = screenshots
        self.search = search
        self.search_query = search_query
        self.link_problems = sitecheck.check_links(list(reports.values()), base_url)


def _key_pages(pages: list[str], root_page: str) -> dict[str, str]:
    """Name -> page for the screenshots: the home page and a few that show the features."""
    wanted = {"home": root_page}
    for page in pages:
        if page.endswith("running_the_course.html"):
            wanted["running_the_course"] = page
        if page.endswith("references.html") and "bibliography" not in wanted:
            wanted["bibliography"] = page
    return wanted


@pytest.fixture(scope="module")
def site() -> Site:
    chromium = _require_browser()
    override = os.environ.get("BNCOURSE_SITE_HTML")
    if override:
        html_dir = Path(override).resolve()
        own_build = False
    else:
        html_dir = ROOT / "_build" / "html"
        own_build = True
        if not sitecheck.build_is_fresh(ROOT):
            log = ROOT / "_build" / "site-test-build.log"
            result = sitecheck.build_book(ROOT, log)
            if result.returncode != 0:
                tail = "\n".join(log.read_text(encoding="utf8").splitlines()[-40:])
                pytest.fail(f"the book build failed (exit {result.returncode}); end of {log}:\n{tail}",
                            pytrace=False)
    if not (html_dir / "index.html").is_file():
        pytest.fail(f"no built site at {html_dir}", pytrace=False)
    screenshots = html_dir.parent / "screenshots"
    for old_shot in screenshots.glob("*.png"):
        old_shot.unlink()  # so a stale picture cannot pass for this run's

    pages = sitecheck.site_pages(html_dir)
    index = sitecheck.parse_html((html_dir / "index.html").read_text(encoding="utf8"))
    # jupyter-book writes index.html as a redirect to the root page of the toc.
    root_page = index.refresh or "index.html"
    pages_to_load = [p for p in pages if p != "index.html" or index.refresh is None]
    key_pages = {page: name for name, page in _key_pages(pages_to_load, root_page).items()}

    with sitecheck.SiteServer(html_dir) as server:
        sitecheck.wait_for_server(server.url)
        with sitecheck.Browser(chromium, server.url) as browser:
            reports = {}
            for page in pages_to_load:
                shot = screenshots / f"{key_pages[page]}.png" if page in key_pages else None
                reports[page] = browser.inspect(server.url + page, page, screenshot=shot)
            # Two more pictures: the first display equation and the first figure of the book.
            for name, selector, has_it in (
                ("math", "article div.math", lambda r: r.containers > 0),
                ("figure", "article img", lambda r: any(i["inMain"] for i in r.images)),
            ):
                found = [p for p, r in reports.items() if has_it(r)]
                if found:
                    browser.inspect(server.url + found[0], found[0], screenshot=screenshots / f"{name}.png",
                                    scroll_to=selector)
            # Offline search: look up the longest word of the home page's title.
            words = sorted(reports[root_page].title.split("—")[0].split(), key=len) if root_page in reports else []
            query = words[-1].strip(",.:;").lower() if words else ""
            search = None
            if "search.html" in reports and query:
                search = browser.search_results(f"{server.url}search.html?q={urllib.parse.quote(query)}")
        # Links are checked against the server while it still runs.
        return Site(html_dir, server.url, reports, own_build, screenshots, search, query)


def _fail_listing(what: str, problems: dict[str, list[str]]) -> None:
    problems = {page: items for page, items in problems.items() if items}
    if problems:
        lines = [f"{page}: {item}" for page, items in sorted(problems.items()) for item in items]
        pytest.fail(f"{what} on {len(problems)} page(s):\n" + "\n".join(lines), pytrace=False)


def test_every_toc_entry_is_a_page(site: Site):
    if not site.own_build:
        pytest.skip("checking a site given by BNCOURSE_SITE_HTML; its toc is unknown")
    missing = [doc for doc in sitecheck.toc_documents(ROOT / "_toc.yml")
               if f"{doc}.html" not in site.reports]
    assert not missing, f"toc entries without a built page: {missing}"


def test_pages_were_loaded(site: Site):
    # Guard against a crawl that silently found nothing: a book has a home page and chapters.
    assert len(site.reports) >= 3, f"only {sorted(site.reports)} were found in {site.html_dir}"


def test_no_console_errors(site: Site):
    _fail_listing("console errors", {p: r.console_errors for p, r in site.reports.items()})


def test_every_request_succeeds(site: Site):
    _fail_listing("failed requests", {p: r.failed_requests for p, r in site.reports.items()})


def test_nothing_is_loaded_from_another_host(site: Site):
    _fail_listing("requests to other hosts (the book must work offline)",
                  {p: r.external_requests for p, r in site.reports.items()})
    _fail_listing("remote scripts, styles or images in the HTML",
                  sitecheck.remote_resources(site.html_dir))


def test_math_is_typeset_by_the_local_mathjax(site: Site):
    _fail_listing("math problems", {p: r.math_problems() for p, r in site.reports.items()})
    with_math = [r for r in site.reports.values() if r.math_count]
    assert with_math, "no page has any math: the math checks would have checked nothing"
    versions = {r.mathjax_version for r in with_math}
    assert versions == {"3.2.2"}, f"expected the shipped MathJax 3.2.2, pages report {versions}"


def test_images_load(site: Site):
    _fail_listing("broken images", {p: r.image_problems() for p, r in site.reports.items()})


def test_notebooks_that_plot_show_their_figures(site: Site):
    """A chapter that draws must show its figures: a kernel left on a non-inline
    matplotlib backend (e.g. MPLBACKEND=Agg in the build's environment) drops them silently."""
    missing = []
    for notebook in sorted((ROOT / "book").rglob("*.ipynb")):
        code = "".join(
            "".join(cell["source"])
            for cell in json.loads(notebook.read_text(encoding="utf8"))["cells"]
            if cell["cell_type"] == "code"
        )
        if not any(marker in code for marker in ("plt.", "plot_", "glue(", ".plot(")):
            continue
        page = notebook.relative_to(ROOT).with_suffix(".html").as_posix()
        report = site.reports.get(page)
        if report is None or not any(i["inMain"] and "_images/" in i["src"] for i in report.images):
            missing.append(page)
    assert not missing, f"pages whose notebook plots but that show no figure: {missing}"


def test_figures_have_alt_text_or_caption(site: Site):
    _fail_listing("undescribed figures", {p: r.caption_problems() for p, r in site.reports.items()})


def test_headings_form_an_outline(site: Site):
    _fail_listing("heading problems", {p: r.heading_problems() for p, r in site.reports.items()})


def test_internal_links_resolve(site: Site):
    if site.link_problems:
        pytest.fail("broken internal links:\n" + "\n".join(site.link_problems), pytrace=False)


def test_notebook_pages_have_download_and_launch_buttons(site: Site):
    """Each chapter written as a notebook offers its .ipynb, Binder and Colab."""
    problems: dict[str, list[str]] = {}
    notebooks = 0
    for page, report in site.reports.items():
        doc = page[: -len(".html")]
        if not (site.html_dir / "_sources" / f"{doc}.ipynb").is_file():
            continue
        notebooks += 1
        source = urllib.parse.urljoin(site.base_url, f"_sources/{doc}.ipynb")
        missing = []
        if source not in report.links:
            missing.append(f"download link {source}")
        if not any(link.startswith("https://mybinder.org/") and link.endswith(f"{doc}.ipynb")
                   for link in report.links):
            missing.append("Binder launch link")
        if not any(link.startswith("https://colab.research.google.com/github/")
                   and link.endswith(f"/blob/main/{doc}.ipynb") for link in report.links):
            missing.append("Colab launch link")
        problems[page] = missing
    _fail_listing("missing buttons", problems)
    if site.own_build and any(ROOT.glob("book/**/*.ipynb")):
        assert notebooks, "the book has notebooks but no page was built from one"


def test_every_page_links_to_the_repository(site: Site):
    if not site.own_build:
        pytest.skip("checking a site given by BNCOURSE_SITE_HTML")
    repo = _repository_url()
    _fail_listing("no repository button",
                  {p: [] if repo in r.links else [f"no link to {repo}"] for p, r in site.reports.items()})


def test_search_works_offline(site: Site):
    if "search.html" not in site.reports:
        pytest.skip("this build has no search page")
    assert site.search_query, "could not pick a search word from the home page title"
    assert site.search, f"searching for {site.search_query!r} found nothing"


def test_screenshots_saved(site: Site):
    shots = sorted(site.screenshots.glob("*.png"))
    assert any(s.name == "home.png" for s in shots), f"no home page screenshot in {site.screenshots}"
    for shot in shots:
        assert shot.stat().st_size > 5_000, f"{shot} looks empty"


# --------------------------------------------------------------------------------------
# The checks themselves: a small hand-written site with known defects must be caught,
# and a clean page must pass, so a green run above means something.

# The configuration Sphinx writes (myst's processHtmlClass), plus a TeX macro: page-level
# MathJax settings must reach the shipped MathJax, or `\RR` shows up as undefined.
_MATHJAX_HEAD = (
    '<script>window.MathJax = {"options": {"processHtmlClass": "math"},'
    ' "tex": {"macros": {"RR": "\\\\mathbb{R}"}}}</script>'
    '<script defer src="_static/mathjax/tex-chtml-full.js"></script>'
)

_GOOD_PAGE = f"""<!DOCTYPE html><html><head><title>Good</title>{_MATHJAX_HEAD}</head>
<body class="tex2jax_ignore mathjax_ignore"><main>
<h1 id="top">Good</h1>
<p>Inline <span class="math notranslate nohighlight">\\(x \\in \\RR^2\\)</span>.</p>
<div class="math notranslate nohighlight">\\[\\frac{{a}}{{\\sqrt{{b + \\epsilon}}}}\\]</div>
<h2 id="sec">Section</h2>
<figure><img src="dot.png" alt=""><figcaption>A dot.</figcaption></figure>
<div class="cell"><img src="dot.png" alt="dot.png"></div><p><strong>Figure:</strong> the dot again.</p>
<p><a href="bad.html#here">bad</a> <a href="good.html#sec">self</a> <a href="https://example.org/">out</a></p>
</main></body></html>"""

_BAD_PAGE = f"""<!DOCTYPE html><html><head><title>Bad</title>{_MATHJAX_HEAD}
<script src="https://cdn.jsdelivr.net/npm/left-pad.js"></script>
<script>console.error("boom")</script></head>
<body class="tex2jax_ignore mathjax_ignore"><main>
<h1 id="here">Bad</h1><h1>Twice</h1><h4>Skipped a level</h4>
<p>Raw $$x^2$$ and an unrendered \\alpha.</p>
<div class="math notranslate nohighlight">\\[\\undefinedmacro + 1\\]</div>
<img src="missing.png" alt="A picture that is not there">
<img src="dot.png" alt="../_images/dot.png">
<p><a href="nowhere.html">gone</a> <a href="good.html#nope">no anchor</a></p>
</main></body></html>"""


def _tiny_png() -> bytes:
    """A valid 2x2 grey PNG, written by hand to need nothing but the stdlib."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 2, 2, 8, 0, 0, 0, 0)  # 2x2, 8-bit greyscale
    pixels = zlib.compress(b"\x00\x80\x80" * 2)  # filter byte + two pixels, per row
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def fake_site(tmp_path_factory) -> dict[str, sitecheck.PageReport]:
    chromium = _require_browser()
    root = tmp_path_factory.mktemp("fake_site")
    (root / "_static").mkdir()
    (root / "_static" / "mathjax").symlink_to(ROOT / "book" / "_static" / "mathjax")
    (root / "good.html").write_text(_GOOD_PAGE, encoding="utf8")
    (root / "bad.html").write_text(_BAD_PAGE, encoding="utf8")
    (root / "dot.png").write_bytes(_tiny_png())
    with sitecheck.SiteServer(root) as server, sitecheck.Browser(chromium, server.url) as browser:
        reports = {page: browser.inspect(server.url + page, page) for page in ("good.html", "bad.html")}
        reports["links"] = sitecheck.check_links(list(reports.values()), server.url)
    reports["remote"] = sitecheck.remote_resources(root)
    return reports


def test_checks_pass_a_clean_page(fake_site):
    good = fake_site["good.html"]
    assert good.mathjax_version == "3.2.2"
    assert good.math_count == 2 and good.containers == 2
    assert good.console_errors == [] and good.failed_requests == [] and good.external_requests == []
    assert good.math_problems() == [] and good.image_problems() == []
    assert good.caption_problems() == [] and good.heading_problems() == []
    assert not any(p.startswith("good.html") for p in fake_site["links"])
    assert "good.html" not in fake_site["remote"]


def test_checks_catch_every_defect(fake_site):
    bad = fake_site["bad.html"]
    assert any("boom" in e for e in bad.console_errors)
    assert bad.external_requests == ["https://cdn.jsdelivr.net/npm/left-pad.js"]
    assert any(r.startswith("404 ") and r.endswith("/missing.png") for r in bad.failed_requests)
    math = "\n".join(bad.math_problems())
    assert "undefined macro \\undefinedmacro" in math
    assert "$$x^2$$" in math and "\\alpha" in math
    assert any(p.endswith("/missing.png") for p in bad.image_problems())
    assert len(bad.caption_problems()) == 1 and "dot.png" in bad.caption_problems()[0]
    headings = "\n".join(bad.heading_problems())
    assert "2 h1 headings" in headings and "from h1 to h4" in headings
    links = "\n".join(fake_site["links"])
    assert "bad.html: /nowhere.html answers 404" in links
    assert "bad.html: /good.html#nope has no element id='nope'" in links
    assert fake_site["remote"] == {"bad.html": ["https://cdn.jsdelivr.net/npm/left-pad.js"]}


# --------------------------------------------------------------------------------------
# Build freshness and toc parsing (no browser needed)


def test_build_is_fresh_follows_the_newest_source(tmp_path):
    (tmp_path / "book").mkdir()
    chapter = tmp_path / "book" / "chapter.ipynb"
    chapter.write_text("{}")
    (tmp_path / "_config.yml").write_text("title: x\n")
    html = tmp_path / "_build" / "html"
    assert not sitecheck.build_is_fresh(tmp_path), "no build yet"
    html.mkdir(parents=True)
    (html / "index.html").write_text("<html></html>")
    os.utime(chapter, (1_000, 1_000))
    os.utime(tmp_path / "_config.yml", (1_000, 1_000))
    os.utime(html / "index.html", (2_000, 2_000))
    assert sitecheck.build_is_fresh(tmp_path)
    os.utime(chapter, (3_000, 3_000))  # the chapter was edited after the build
    assert not sitecheck.build_is_fresh(tmp_path)
    assert sitecheck.newest_source(tmp_path) == (3_000, chapter)


def test_toc_documents_lists_root_and_every_file(tmp_path):
    toc = tmp_path / "_toc.yml"
    toc.write_text(
        "format: jb-book\nroot: book/intro\nparts:\n"
        "  - caption: A\n    numbered: true\n    chapters:\n"
        "      - file: book/one.ipynb\n        sections:\n          - file: book/one_a\n"
        "  - caption: B\n    chapters:\n      - file: book/references\n"
    )
    assert sitecheck.toc_documents(toc) == ["book/intro", "book/one", "book/one_a", "book/references"]
