"""Sphinx extension: keep one copy of each inline <script> on every page.

Why: sphinx-thebe 0.3.1 registers an inline script (`const THEBE_JS_URL = ...`) while the
documents are read. Sphinx 7.4 hands that script to the HTML builder at once (file name
None) and again when writing starts (file name ''), and its duplicate check compares the
file names, so every page gets the block twice. The second `const` then throws "Identifier
'THEBE_JS_URL' has already been declared" in every reader's console. Dropping repeated
inline scripts fixes that without patching either package; scripts loaded from files are
already deduplicated by Sphinx and are left alone.
"""

from __future__ import annotations

from typing import Any


def _drop_repeated_inline_scripts(app, pagename: str, templatename: str,
                                  context: dict[str, Any], doctree) -> None:  # noqa: ANN001
    scripts = context.get("script_files")
    if not isinstance(scripts, list):
        return
    seen: set[str] = set()
    kept = []
    for script in scripts:
        body = getattr(script, "attributes", {}).get("body")
        if not getattr(script, "filename", None) and body:
            if body in seen:
                continue
            seen.add(body)
        kept.append(script)
    context["script_files"] = kept


def setup(app) -> dict[str, Any]:  # noqa: ANN001
    # Late priority: run after the extensions that add scripts for this page (e.g. MathJax).
    app.connect("html-page-context", _drop_repeated_inline_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
