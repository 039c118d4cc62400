"""Sphinx hooks the book's build needs (``_config.yml`` loads this module as
an extension); nothing in the chapters uses it.

- The theme starts in ``auto`` mode: left empty, pydata-sphinx-theme logs
  "Got invalid theme mode" as an error in every reader's console.
- Long identifiers in inline code wrap (``_book_static/course.css``), so
  no page is wider than a phone's screen.
- Each script is included once: sphinx-thebe's configuration script was
  added twice to every page, and a second ``const THEBE_JS_URL`` is a
  ``SyntaxError`` in the browser.
"""

from __future__ import annotations

from pathlib import Path

STATIC = Path(__file__).with_name("_book_static")


def _page(app, pagename, templatename, context, doctree) -> None:
    context.setdefault("default_mode", "auto")  # the theme's template reads it
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for script in scripts:
        attributes = getattr(script, "attributes", {}) or {}
        name = getattr(script, "filename", None) or ""  # None and "" alike
        key = (name, tuple(sorted((k, str(v)) for k, v in attributes.items())))
        if key not in seen:
            seen.add(key)
            kept.append(script)
    scripts[:] = kept


def _static(app) -> None:
    app.config.html_static_path.append(str(STATIC))


def setup(app):
    app.connect("builder-inited", _static)
    app.add_css_file("course.css")
    # Early: html-page-context stops at the first handler that returns a
    # template, and the theme's handlers come later.
    app.connect("html-page-context", _page, priority=100)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
