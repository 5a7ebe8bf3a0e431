"""MkDocs hook (see ``hooks:`` in mkdocs.yml): publish the repository files the docs link to.

The pages in ``docs/`` are read on GitHub as well as on the site, so they link to files outside
``docs/`` by their path in the repository: ``../benchmarks/results/ratios.png``,
``../benchmarks/results/latest.md``, ``../notebooks/tour.py``. MkDocs only knows the files under
``docs_dir`` and reports those links as broken, which ``--strict`` turns into a failed build.

This hook finds every relative link of the docs pages (and, in turn, of the Markdown files it
adds) whose target lies outside ``docs/`` but inside the repository, and adds that file to the
site under ``repo/`` (``repo/benchmarks/results/ratios.png``). Its ``src_uri`` stays the
``../``-path the pages use, so MkDocs resolves the links as written and rewrites them to the
published copy; nothing is copied into ``docs/``. Markdown files become pages (outside the nav),
anything else a static file. A link to a file that does not exist is left alone, so MkDocs
still reports it, and ``--strict`` still fails on it.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files, InclusionLevel

# The target of an inline link or image, ``[text](target "title")`` / ``![alt](target)``, and of
# a reference definition, ``[label]: target``. Good enough for these pages: a false match only
# publishes a file that exists anyway.
_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)|^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
PUBLISHED_UNDER = "repo"


def _targets(markdown: str, src_uri: str) -> set[str]:
    """Targets of the relative links in ``markdown`` (a page at ``src_uri``), as paths relative
    to docs_dir with their anchors dropped."""
    out = set()
    for match in _LINK.finditer(markdown):
        target = (match.group(1) or match.group(2)).split("#", 1)[0].split("?", 1)[0]
        if not target or "://" in target or target.startswith(("/", "mailto:")):
            continue
        out.add(posixpath.normpath(posixpath.join(posixpath.dirname(src_uri), target)))
    return out


def on_files(files: Files, config: MkDocsConfig) -> Files:
    docs = Path(config.docs_dir).resolve()
    repo = Path(config.config_file_path).resolve().parent
    todo = [f for f in files if f.is_documentation_page()]
    seen: set[str] = set()
    while todo:
        page = todo.pop()
        for uri in _targets(page.content_string, page.src_uri):
            if not uri.startswith("../") or uri in seen:
                continue
            seen.add(uri)
            path = (docs / uri).resolve()
            if not path.is_file() or not path.is_relative_to(repo) or path.is_relative_to(docs):
                continue  # not ours to publish: MkDocs reports the link if it is broken
            rel = path.relative_to(repo).as_posix()
            # where MkDocs would put the file if it were docs/repo/<rel>
            stand_in = File(
                f"{PUBLISHED_UNDER}/{rel}", None, config.site_dir, config.use_directory_urls
            )
            new = File(
                uri,
                str(docs),
                config.site_dir,
                config.use_directory_urls,
                dest_uri=stand_in.dest_uri,
                inclusion=InclusionLevel.NOT_IN_NAV,
            )
            files.append(new)
            if new.is_documentation_page():
                todo.append(new)
    return files
