"""Check a built book the way a reader meets it: served over HTTP, loaded in headless Chromium.

Used by `tests/test_site.py`. The pieces, in the order a test uses them:

- `find_chromium()`: the browser binary, or None (the tests then skip).
- `build_is_fresh(root)` / `build_book(root)`: reuse `_build/html` when it is newer than every
  source file, else run `jupyter-book build . -W -n --keep-going` (execution is cached, so
  only changed notebooks run again).
- `SiteServer(html_dir)`: a stdlib `http.server` on 127.0.0.1, on a free port, in a thread.
- `Browser`: Playwright driving the system Chromium (nothing is downloaded). Every request
  that leaves the local server is blocked and recorded, so a page that works here works
  offline.
- `Browser.inspect(url)` -> `PageReport`: console errors, failed and external requests,
  MathJax typesetting, images, figure captions, heading outline, links and buttons.
- `check_links(reports, server)`: every same-origin link answers 200 and every `#anchor`
  exists in its target page.
"""

from __future__ import annotations

import functools
import html.parser
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

# Files whose change makes a built site stale (relative to the repository root).
SOURCE_GLOBS = (
    "book/**/*.ipynb",
    "book/**/*.md",
    "book/_static/**/*",
    "_config.yml",
    "_toc.yml",
    "references.bib",
    "bncourse/**/*.py",
)

# Folders of a built site that hold assets, not pages.
ASSET_DIRS = ("_static", "_sources", "_images", "_downloads")

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# The flags the course's CI uses (it runs as root, hence --no-sandbox); no background traffic.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
)


# --------------------------------------------------------------------------------------
# Finding the browser, building, serving


def find_chromium() -> str | None:
    """Return the path of a Chromium/Chrome binary: $BNCOURSE_CHROMIUM, else the first on PATH."""
    explicit = os.environ.get("BNCOURSE_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def newest_source(root: Path) -> tuple[float, Path | None]:
    """Return (mtime, path) of the most recently modified source file under `root`."""
    newest: tuple[float, Path | None] = (0.0, None)
    for pattern in SOURCE_GLOBS:
        for path in root.glob(pattern):
            if path.is_file() and ".ipynb_checkpoints" not in path.parts:
                mtime = path.stat().st_mtime
                if mtime > newest[0]:
                    newest = (mtime, path)
    return newest


def newest_output(html_dir: Path) -> float:
    """Return the newest mtime of any file in a built site (0.0 when there is none).

    Sphinx rewrites only what changed, so the newest output file is the time of the
    last build that changed anything; a no-op rebuild leaves it alone, correctly.
    """
    times = [p.stat().st_mtime for p in html_dir.rglob("*") if p.is_file()]
    return max(times, default=0.0)


def failure_marker(root: Path) -> Path:
    """Written when `build_book` fails: the HTML it left (Sphinx keeps going) is no reuse."""
    return root / "_build" / "site-test-build.failed"


def build_is_fresh(root: Path) -> bool:
    """True when `root/_build/html` exists, is newer than every source file, and the last
    build these tests ran did not fail."""
    html_dir = root / "_build" / "html"
    if not (html_dir / "index.html").is_file() or failure_marker(root).exists():
        return False
    return newest_output(html_dir) >= newest_source(root)[0]


def jupyter_book_command() -> list[str]:
    """The `jupyter-book` of the interpreter running the tests (the course's .venv)."""
    script = Path(sys.executable).with_name("jupyter-book")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from jupyter_book.cli.main import main; sys.exit(main())"]


def build_book(root: Path, log_path: Path) -> subprocess.CompletedProcess:
    """Build the whole book like `python3 tasks.py book`; the log goes to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("KERAS_BACKEND", "torch")
    env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
    # Put the venv first so the notebooks' kernel is this interpreter's.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [*jupyter_book_command(), "build", ".", "-W", "-n", "--keep-going"]
    marker = failure_marker(root)
    if marker.exists():
        # Sphinx re-reads only changed files, and warnings of unchanged ones are not
        # repeated: after a failure, read everything again (notebooks come from the cache).
        cmd.append("--all")
    with open(log_path, "w", encoding="utf8") as log:
        result = subprocess.run(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode == 0:
        marker.unlink(missing_ok=True)
    else:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"jupyter-book exited {result.returncode}; see {log_path}\n")
    return result


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        pass  # one line per request would bury pytest's output


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # noqa: ANN001
        # The browser drops connections it no longer needs (a redirect, a closed page);
        # that is not a failure of the site, and a traceback per drop would bury the report.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class SiteServer:
    """Serve a directory on 127.0.0.1 at a free port, in a daemon thread.

    Use as a context manager; `url` is the base URL ending in "/".
    """

    def __init__(self, directory: Path):
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self.httpd = _QuietServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "SiteServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# --------------------------------------------------------------------------------------
# Pages and static HTML


def site_pages(html_dir: Path) -> list[str]:
    """Paths (relative, posix) of every HTML page of a built site, assets folders excluded."""
    pages = []
    for path in sorted(html_dir.rglob("*.html")):
        rel = path.relative_to(html_dir)
        if rel.parts[0] not in ASSET_DIRS:
            pages.append(rel.as_posix())
    return pages


class _TagCollector(html.parser.HTMLParser):
    """Collect element ids, `name` anchors, refresh targets and resource URLs of one page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.refresh: str | None = None
        self.resources: list[tuple[str, str]] = []  # (tag, url) loaded with the page

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: (v or "") for k, v in attrs}
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and "name" in a:
            self.ids.add(a["name"])
        if tag == "meta" and a.get("http-equiv", "").lower() == "refresh":
            match = re.search(r"url=(.+)", a.get("content", ""), re.I)
            self.refresh = match.group(1).strip().strip("'\"") if match else None
        if tag in ("script", "img", "iframe", "audio", "video", "source") and a.get("src"):
            self.resources.append((tag, a["src"]))
        if tag == "link" and a.get("href"):
            rels = set(a.get("rel", "").lower().split())
            if rels & {"stylesheet", "preload", "modulepreload", "icon", "manifest"}:
                self.resources.append((tag, a["href"]))


def parse_html(text: str) -> _TagCollector:
    collector = _TagCollector()
    collector.feed(text)
    return collector


def remote_resources(html_dir: Path) -> dict[str, list[str]]:
    """Pages that reference a script, stylesheet, font or image on another host.

    Links (`<a href>`, e.g. the Binder and Colab buttons) are fine: they load nothing
    until clicked. Returns {page: [url, ...]} for offenders only.
    """
    found: dict[str, list[str]] = {}
    for page in site_pages(html_dir):
        tags = parse_html((html_dir / page).read_text(encoding="utf8"))
        remote = [url for _, url in tags.resources if re.match(r"(https?:)?//", url)]
        if remote:
            found[page] = remote
    return found


def toc_documents(toc_path: Path) -> list[str]:
    """Every document (`root` and each `file`) named in a jupyter-book `_toc.yml`."""
    import yaml  # shipped with jupyter-book

    docs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key in ("root", "file"):
                if isinstance(node.get(key), str):
                    docs.append(node[key])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(yaml.safe_load(toc_path.read_text(encoding="utf8")))
    # Drop a suffix if one was written; the built page is always <doc>.html.
    return [re.sub(r"\.(md|ipynb|rst)$", "", d) for d in docs]


# --------------------------------------------------------------------------------------
# In-browser inspection

# Runs in the page once it has loaded; returns plain data for PageReport.
_INSPECT_JS = r"""
async () => {
  const mj = window.MathJax;
  let mathjaxVersion = null;
  if (mj && mj.startup && mj.startup.promise) {
    await mj.startup.promise;          // resolves after the first typeset pass
    mathjaxVersion = mj.version || "?";
  }
  const main = document.querySelector("article.bd-article") ||
               document.querySelector("main") || document.body;
  const short = (s) => s.replace(/\s+/g, " ").trim().slice(0, 80);

  // Math: every element Sphinx marked as math must now hold MathJax output.
  const mathEls = [...main.querySelectorAll(".math")];
  const untypeset = mathEls.filter(e => !e.querySelector("mjx-container")).map(e => short(e.textContent));
  const containers = main.querySelectorAll("mjx-container").length;
  const texErrors = [...main.querySelectorAll("mjx-merror, [data-mjx-error]")]
      .map(e => short(e.getAttribute("data-mjx-error") || e.textContent));
  // With the noundefined extension an unknown macro is drawn as red text, not an error.
  const undefinedMacros = [...main.querySelectorAll("mjx-assistive-mml mtext")]
      .map(e => e.textContent).filter(t => /^\\[A-Za-z]+/.test(t));

  // TeX left in the visible text (outside code), e.g. "$$", "\[", "\frac": not typeset.
  const clone = main.cloneNode(true);
  clone.querySelectorAll("pre, code, script, style, textarea, mjx-container, .highlight")
       .forEach(e => e.remove());
  const text = clone.textContent;
  const rawTex = [];
  const re = /\$\$|\\[()\[\]]|\\[A-Za-z]{2,}\b/g;
  let m;
  while ((m = re.exec(text)) !== null && rawTex.length < 5) {
    rawTex.push(short(text.slice(Math.max(0, m.index - 30), m.index + 40)));
  }

  // Images: loaded, and (inside the article) described by alt text or a caption.
  const looksLikeFile = (s) => /[\/\\]|\.(png|jpe?g|svg|gif|webp)$/i.test(s);
  const captionAfter = (img) => {
    for (let el = img; el && el !== main; el = el.parentElement) {
      const next = el.nextElementSibling;
      if (next) return /^\s*figure\b/i.test(next.textContent) ? short(next.textContent) : "";
    }
    return "";
  };
  const images = [...document.images].map(img => {
    const inMain = main.contains(img);
    const fig = img.closest("figure");
    const figcaption = fig && fig.querySelector("figcaption") ? short(fig.querySelector("figcaption").textContent) : "";
    const alt = (img.getAttribute("alt") || "").trim();
    return {
      src: img.currentSrc || img.src, inMain, alt,
      loaded: img.complete && img.naturalWidth > 0,
      described: !inMain || figcaption !== "" || (alt !== "" && !looksLikeFile(alt)) || captionAfter(img) !== "",
    };
  });

  const headings = [...main.querySelectorAll("h1, h2, h3, h4, h5, h6")]
      .map(h => [Number(h.tagName[1]), short(h.textContent.replace(/#$/, ""))]);
  const links = [...document.querySelectorAll("a[href]")]
      .map(a => a.href).filter(h => h.startsWith("http"));
  return {mathjaxVersion, mathCount: mathEls.length, containers, untypeset, texErrors,
          undefinedMacros, rawTex, images, headings, links: [...new Set(links)],
          title: document.title};
}
"""


@dataclass
class PageReport:
    """What one page did in the browser; `problems()` turns it into readable failures."""

    path: str
    title: str = ""
    console_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    external_requests: list[str] = field(default_factory=list)
    mathjax_version: str | None = None
    math_count: int = 0
    containers: int = 0
    untypeset: list[str] = field(default_factory=list)
    tex_errors: list[str] = field(default_factory=list)
    undefined_macros: list[str] = field(default_factory=list)
    raw_tex: list[str] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    headings: list[tuple[int, str]] = field(default_factory=list)
    links: list[str] = field(default_factory=list)

    def math_problems(self) -> list[str]:
        out = [f"not typeset: {t!r}" for t in self.untypeset]
        out += [f"TeX error: {t!r}" for t in self.tex_errors]
        out += [f"undefined macro {t}" for t in self.undefined_macros]
        out += [f"raw TeX in the text: {t!r}" for t in self.raw_tex]
        if self.math_count and self.mathjax_version is None:
            out.append(f"{self.math_count} math elements but MathJax did not load")
        if self.math_count and self.containers == 0:
            out.append("MathJax produced no mjx-container")
        return out

    def image_problems(self) -> list[str]:
        return [f"image not loaded: {i['src']}" for i in self.images if not i["loaded"]]

    def caption_problems(self) -> list[str]:
        return [
            f"image without alt text or caption: {i['src']} (alt={i['alt']!r})"
            for i in self.images
            if not i["described"]
        ]

    def heading_problems(self) -> list[str]:
        levels = [level for level, _ in self.headings]
        out = []
        if levels.count(1) != 1:
            out.append(f"{levels.count(1)} h1 headings (expected exactly one)")
        if levels and levels[0] != 1:
            out.append(f"first heading is h{levels[0]} {self.headings[0][1]!r}, not h1")
        for (prev, _), (level, text) in zip(self.headings, self.headings[1:]):
            if level > prev + 1:
                out.append(f"heading level skips from h{prev} to h{level} at {text!r}")
        return out


class Browser:
    """Headless system Chromium driven by Playwright; one context per page, no network.

    Use as a context manager. Every request to a host other than `allowed_origin` is
    aborted and recorded in the page's `external_requests`.
    """

    def __init__(self, executable: str, allowed_origin: str):
        self.executable = executable
        self.allowed_origin = allowed_origin.rstrip("/")

    def __enter__(self) -> "Browser":
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        try:
            self.browser = self._pw.chromium.launch(
                executable_path=self.executable,
                headless=True,
                args=[f for f in CHROMIUM_FLAGS if f != "--headless"],
            )
        except Exception:
            self._pw.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.browser.close()
        self._pw.stop()

    def _allowed(self, url: str) -> bool:
        return url.startswith((self.allowed_origin + "/", "data:", "blob:", "about:"))

    def inspect(self, url: str, path: str, screenshot: Path | None = None,
                scroll_to: str = "article img, article div.math") -> PageReport:
        """Load `url`, wait for MathJax and the network to settle, and report what happened.

        With `screenshot`, also save a viewport picture, scrolled to the first element
        matching the CSS selector `scroll_to` when the page has one.
        """
        report = PageReport(path=path)
        context = self.browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()

        def route(r):  # noqa: ANN001 - playwright's Route
            if self._allowed(r.request.url):
                r.continue_()
            else:
                report.external_requests.append(r.request.url)
                r.abort()

        page.route("**/*", route)
        page.on("console", lambda m: m.type == "error" and report.console_errors.append(m.text))
        page.on("pageerror", lambda e: report.console_errors.append(f"uncaught: {e}"))
        page.on(
            "response",
            lambda r: r.status >= 400 and report.failed_requests.append(f"{r.status} {r.url}"),
        )
        page.on(
            "requestfailed",
            lambda r: self._allowed(r.url) and report.failed_requests.append(f"{r.failure} {r.url}"),
        )
        try:
            page.goto(url, wait_until="load", timeout=60_000)
            data = page.evaluate(_INSPECT_JS)
            page.wait_for_load_state("networkidle", timeout=30_000)  # fonts load after typesetting
            if screenshot is not None:
                self._screenshot(page, screenshot, scroll_to)
        finally:
            page.close()
            context.close()
        report.title = data["title"]
        report.mathjax_version = data["mathjaxVersion"]
        report.math_count = data["mathCount"]
        report.containers = data["containers"]
        report.untypeset = data["untypeset"]
        report.tex_errors = data["texErrors"]
        report.undefined_macros = data["undefinedMacros"]
        report.raw_tex = data["rawTex"]
        report.images = data["images"]
        report.headings = [tuple(h) for h in data["headings"]]
        report.links = data["links"]
        return report

    @staticmethod
    def _screenshot(page, path: Path, scroll_to: str) -> None:  # noqa: ANN001 - playwright's Page
        path.parent.mkdir(parents=True, exist_ok=True)
        page.evaluate(
            """(selector) => {
                const el = document.querySelector(selector);
                if (el) el.scrollIntoView({block: "center"});
            }""",
            scroll_to,
        )
        page.screenshot(path=str(path))

    def search_results(self, url: str) -> list[str]:
        """Open the site's search page at `url` (with ?q=...) and return the result titles."""
        context = self.browser.new_context()
        page = context.new_page()
        page.route("**/*", lambda r: r.continue_() if self._allowed(r.request.url) else r.abort())
        try:
            page.goto(url, wait_until="load", timeout=60_000)
            # Sphinx fills #search-results asynchronously, then writes a summary line.
            page.wait_for_selector("#search-results p.search-summary", timeout=30_000)
            return page.eval_on_selector_all("#search-results ul.search li a", "as => as.map(a => a.textContent)")
        finally:
            page.close()
            context.close()


# --------------------------------------------------------------------------------------
# Links


def _fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - local server
            body = response.read()
            kind = response.headers.get_content_type()
            return response.status, body.decode("utf8", "replace") if kind == "text/html" else ""
    except urllib.error.HTTPError as err:
        return err.code, ""


def check_links(reports: list[PageReport], base_url: str) -> list[str]:
    """Every same-origin link of every page must answer 200, and its #anchor must exist.

    Returns "page: problem" strings. Links to other hosts are not followed (no network);
    the pages' own checks make sure nothing from another host is loaded.
    """
    problems: list[str] = []
    targets: dict[str, tuple[int, set[str]]] = {}
    for report in reports:
        for link in report.links:
            if not link.startswith(base_url):
                continue
            target, _, fragment = link.partition("#")
            if target not in targets:
                status, text = _fetch(target)
                targets[target] = (status, parse_html(text).ids if text else set())
            status, ids = targets[target]
            shown = link[len(base_url) - 1 :]
            if status != 200:
                problems.append(f"{report.path}: {shown} answers {status}")
            elif fragment and urllib.parse.unquote(fragment) not in ids:
                problems.append(f"{report.path}: {shown} has no element id={fragment!r}")
    return sorted(set(problems))


def wait_for_server(url: str, seconds: float = 10.0) -> None:
    """Block until `url` answers (the server thread has started)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            _fetch(url)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
