"""Build the documentation site into `_docs/` from the notebooks, offline: `python scripts/make_docs.py` (or `make docs`).

nbdev's `nbdev-docs` needs the Quarto binary (so does `nbdev-proc-nbs`, which tries to install it first), and Quarto cannot be
installed offline: every `quarto-cli` release on PyPI is a small sdist whose build downloads the binary; npm and Debian do not
have it. So this keeps nbdev's half and replaces Quarto's:
1. nbdev's own notebook processor (`nbdev.processors.FilterDefaults`, what `nbdev-proc-nbs` runs) on every notebook nbdev would
   render: `show_doc` added and run for exported names, `#| hide` cells dropped, backticked names linked, title and description
   taken from the first heading. Two differences: a cell that mixes imports with other code has only its imports run (nbdev
   runs the whole cell, examples and all), and text after the title and description of the first markdown cell is kept
   (nbdev drops the whole cell; nbs/index.ipynb, the README's source, holds everything in it);
2. each processed notebook rendered to HTML by nbconvert, with a shared sidebar listing every page in notebook order
   (index first, then the module notebooks, then the tutorials), the page name being nbdev's (`00_config.ipynb` -> `config.html`),
   so the anchors in `finetune/_modidx.py` and nbdev's doc links resolve.
Links are made to work on the site: nbdev's absolute doc links to this site become relative (to the class when a method has no
section of its own, plain text when nothing documents the name); a relative link to a notebook points at its page; a relative
link to another file of the repository (an image, a config) gets a copy of that file under `repo/`. Links in nbs/index.ipynb
are relative to the repository root, as in README.md. A link that resolves to nothing is left as written, for
`scripts/check_links.py` (run after this by `make docs`) to report.
"""
import argparse, functools, html, json, os, posixpath, re, shutil, sys, tempfile, time, warnings
from multiprocessing import get_context
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
PAGE_ATTRS = re.compile(r'(\b(?:href|src)=")([^"]*)(")')
HEADING = re.compile(r'<h([1-6]) id="([^"]*)">(.*?)<a class="anchor-link" href="#([^"]*)">¶</a></h\1>', re.S)
DOC_LINK = re.compile(r'<a href="([^"]*)">(.*?)</a>', re.S)
IDS = re.compile(r'\b(?:id|name)="([^"]*)"')
MD_LINK_ATTRS = re.compile(r'(\[[^\]\n]*\]\([^)\s]*\))\{[^}\n]*\}')  # Quarto's `[text](url){target="_blank" ...}`
KEEP_KEYS = {'cell_type', 'source', 'metadata', 'outputs', 'execution_count', 'id', 'attachments'}


def notebooks(nbs: Path) -> list[Path]:
    "The notebooks nbdev renders, in sidebar order: index first, then by folder and name (nbdev's `nbdev_sidebar` order)."
    from nbdev.doclinks import nbglob
    files = [Path(f) for f in nbglob(nbs, skip_folder_re=r'^[_.]')]
    def key(p):
        rel = p.relative_to(nbs)
        return (len(rel.parts) > 1, rel.parent.as_posix(), rel.name != 'index.ipynb', rel.name)
    return sorted(files, key=key)


def page_name(nb: Path, nbs: Path) -> str:
    "The site path nbdev gives a notebook (`05_train_checkpoint.ipynb` -> `train_checkpoint.html`)."
    from nbdev.doclinks import nbpath2html
    return nbpath2html(nb.relative_to(nbs)).as_posix()


@functools.lru_cache(None)
def _doc_procs():
    "nbdev's processors (`FilterDefaults`), except that a cell mixing imports with other code has only its imports run."
    import ast
    from nbdev.processors import FilterDefaults, exec_show_docs, _do_eval, _show_docs

    class exec_show_docs_imports(exec_show_docs):
        "`exec_show_docs`, running only the top-level imports of a cell that also holds other code (nbdev would run it all)."
        def __call__(self, cell):
            if not self.nb.has_docs_ or not hasattr(self, 'k') or cell.cell_type != 'code': return
            trees = cell.parsed_() or []
            shown = cell.directives_.keys() & {'export', 'exports', 'exporti', 'exec_doc'} or _show_docs(trees)
            imports = [t for t in trees if isinstance(t, (ast.Import, ast.ImportFrom))]
            if shown or not _do_eval(cell) or len(imports) == len(trees): return super().__call__(cell)
            self.mixed.append(next((ln for ln in cell.source.splitlines() if ln.strip() and not ln.startswith('#|')), '')[:60])
            if imports:
                self.k.run('\n'.join(ast.unparse(t) for t in imports))
                if self.k.exc: raise Exception(f"Error in cell {cell.idx_} (its imports):\n{cell.source}\n{type(self.k.exc).__name__}: {self.k.exc}")
        def begin(self):
            self.mixed = []
            super().begin()

    class DocFilter(FilterDefaults):
        def base_procs(self): return [exec_show_docs_imports if p is exec_show_docs else p for p in super().base_procs()]
    return DocFilter


def split_title(nb) -> bool:
    "Move what follows `# title` and `> description` in the first markdown cell into a cell of its own (True if it did)."
    from fastcore.nbio import mk_cell
    i, cell = next(((i, c) for i, c in enumerate(nb.cells) if c.cell_type == 'markdown'), (None, None))
    if cell is None or not re.match(r'#\s', cell.source): return False
    lines = cell.source.splitlines()
    n = next((k for k, ln in enumerate(lines) if ln.strip() and not re.match(r'[#>]\s', ln)), len(lines))
    if n == len(lines): return False
    # nbdev's frontmatter processor takes the title and description from this cell and drops all of it
    cell.source = '\n'.join(lines[:n]).strip()
    nb.cells.insert(i + 1, mk_cell('\n'.join(lines[n:]).strip('\n'), 'markdown'))
    return True


def render(nb: dict) -> dict:
    "A processed notebook as HTML parts: `title`, `description` and `body` (headings with nbdev's anchors)."
    import nbformat
    from nbconvert import HTMLExporter
    from nbconvert.filters import markdown2html_mistune
    from traitlets.config import Config
    fm = frontmatter(nb)
    exporter = HTMLExporter(config=Config({'TagRemovePreprocessor': {'enabled': True, 'remove_input_tags': {'remove_input'}}}),
                            template_name='basic', exclude_input_prompt=True, exclude_output_prompt=True)
    # the template runs bleach over pygments' highlighting of every code cell (a third of the rendering time); the notebooks
    # are this repository's own, so their HTML is kept as it is
    exporter.register_filter('clean_html', lambda x: x.decode() if isinstance(x, bytes) else str(x))
    body = exporter.from_notebook_node(nbformat.reads(json.dumps(prepare(nb)), as_version=4))[0]
    desc = f'<div class="description">{markdown2html_mistune(str(fm["description"]))}</div>' if fm.get('description') else ''
    return dict(title=str(fm.get('title') or ''), description=desc, body=fix_headings(body))


def page(src: str) -> dict:
    "Run nbdev's processor on one notebook and render it (in a worker process: `show_doc` cells import the package)."
    from fastcore.nbio import nb2str, read_nb
    warnings.simplefilter('ignore')  # nbdev warns with the whole cell; the notes say it in one line
    os.environ['IN_TEST'] = '1'  # as nbdev's own driver of the processor: the notebooks' `IN_TEST` guards apply
    name = Path(src).relative_to(ROOT).as_posix()
    try:
        nb = read_nb(src)
        split_title(nb)
        proc = _doc_procs()().nb_proc(nb)
        proc.process()
        res = render(json.loads(nb2str(nb)))
    except Exception as e: return dict(error=f'{name}: {e}')
    mixed = [c for p in proc.procs if hasattr(p, 'mixed') for c in p.mixed]
    return dict(res, notes=[f'{name}: the cell starting {m!r} mixes imports with other code; only its imports were run' for m in mixed])


def pages_html(files: list[Path], workers: int, verbose: bool = False) -> list[dict]:
    "`page` for each notebook, in order, on `workers` processes; raises naming every notebook that failed."
    if workers > 1:
        # a worker imports the package once for all the notebooks it takes; spawn, so nothing is inherited from this process.
        # `page` goes by this file's module name, not `__main__`: the IPython shell that runs show_doc replaces a worker's `__main__`
        from concurrent.futures import ProcessPoolExecutor
        if str(Path(__file__).resolve().parent) not in sys.path: sys.path.insert(0, str(Path(__file__).resolve().parent))
        import make_docs
        with ProcessPoolExecutor(workers, mp_context=get_context('spawn')) as ex: res = list(ex.map(make_docs.page, map(str, files)))
    else: res = [page(str(f)) for f in files]
    _notes(sorted(n for r in res for n in r.get('notes', [])), 'cells mixing imports with other code had only their imports run '
           '(nbdev runs the whole cell; keep imports in cells of their own)', verbose)
    if errors := [r['error'] for r in res if 'error' in r]:
        raise SystemExit('docs: nbdev could not process these notebooks (it runs their exported cells, imports and show_doc cells):\n\n'
                         + '\n\n'.join(errors))
    return res


def _notes(notes: list[str], what: str, verbose: bool):
    "One line saying how many `notes` there are, or all of them when `verbose`."
    if not notes: return
    print(f'docs: {len(notes)} {what}' + (':' if verbose else '; --verbose lists them'))
    if verbose:
        for n in notes: print('  ' + n)


def frontmatter(nb: dict) -> dict:
    "Title, description and other fields of the raw frontmatter cell nbdev's processor writes."
    import yaml
    for c in nb['cells']:
        src = ''.join(c['source'])
        if c['cell_type'] == 'raw' and src.lstrip().startswith('---'):
            return yaml.safe_load(src.strip().strip('-')) or {}
    return {}


def _directives(src: str) -> tuple[dict, str]:
    "Quarto cell options (`#| echo: false`) and the source without them."
    opts, keep = {}, []
    for ln in src.splitlines():
        m = re.match(r'\s*#\|\s*([\w-]+)\s*:?\s*(.*)$', ln)
        if m: opts[m.group(1)] = m.group(2).strip().strip('"').lower()
        else: keep.append(ln)
    return opts, '\n'.join(keep).strip('\n')


def _md_text(x) -> str: return ''.join(x) if isinstance(x, list) else x


def prepare(nb: dict) -> dict:
    "Apply the Quarto cell options nbconvert does not know (echo, output, include) and drop fields nbformat rejects."
    cells = []
    for c in nb['cells']:
        if c['cell_type'] == 'raw': continue  # the frontmatter: shown as the page's title and description
        c = {k: v for k, v in c.items() if k in KEEP_KEYS}
        c['metadata'], c['id'] = {}, f'c{len(cells)}'  # ids by position: the same notebook gives the same page
        if c['cell_type'] == 'code':
            opts, c['source'] = _directives(_md_text(c['source']))
            if opts.get('include') == 'false': continue
            if opts.get('echo') == 'false': c['metadata']['tags'] = ['remove_input']
            if opts.get('output') == 'false': c['outputs'] = []
            for o in c['outputs']:
                if 'text/markdown' in o.get('data', {}):
                    o['data']['text/markdown'] = MD_LINK_ATTRS.sub(r'\1', _md_text(o['data']['text/markdown']))
            if not c['source'] and not c['outputs']: continue
        cells.append(c)
    md = {k: v for k, v in nb.get('metadata', {}).items() if k in ('kernelspec', 'language_info')}
    return {**nb, 'cells': cells, 'metadata': md}


def slug(text: str) -> str:
    "A heading's anchor as nbdev's doc links spell it: lower case, spaces to dashes, only word characters, dots and dashes."
    return re.sub(r'[^\w.\-]', '', html.unescape(text).strip().lower().replace(' ', '-')) or 'section'


def fix_headings(body: str) -> str:
    "Give headings nbdev's lower-case anchors (`#trainer.fit`, not nbconvert's `#Trainer.fit`), unique on the page."
    seen = {}
    def sub(m):
        base = slug(m.group(2)); n = seen.get(base, 0); seen[base] = n + 1
        hid = base if n == 0 else f'{base}-{n}'
        return f'<h{m.group(1)} id="{hid}">{m.group(3)}<a class="anchor-link" href="#{hid}">¶</a></h{m.group(1)}>'
    return HEADING.sub(sub, body)


def _rel(target: str, page: str) -> str:
    "`target` (a site path, maybe with `#anchor`) as a link from `page`."
    path, hash_, frag = target.partition('#')
    if path == page and frag: return '#' + frag
    return posixpath.relpath(path, posixpath.dirname(page) or '.') + hash_ + frag


class Linker:
    "Rewrites the links of a page's body so they work on the site (see the module docstring)."
    def __init__(self, site_url: str, pages: dict[Path, str], ids: dict[str, set], out: Path, repo: Path = ROOT):
        self.site_url, self.pages, self.ids, self.out, self.repo = site_url.rstrip('/') + '/', pages, ids, out, repo
        self.unlinked = []  # nbdev doc links to names that no page documents, as `page: name`

    def doc_link(self, url: str, page: str) -> str | None:
        "One of nbdev's doc links to this site, made relative: to `#cls` when `#cls.method` has no section; None if nothing has one."
        path, _, frag = url[len(self.site_url):].partition('#')
        if not frag or path not in self.ids: return _rel(url[len(self.site_url):], page)  # a missing page is left for the link check
        names = frag.split('.')
        while names:
            if '.'.join(names) in self.ids[path]: return _rel(f'{path}#{".".join(names)}', page)
            names.pop()

    def __call__(self, url: str, page: str, base: Path) -> str:
        "Where `url`, written in a notebook whose links are relative to `base`, points on the site."
        if self.site_url != '/' and url.startswith(self.site_url): return _rel(url[len(self.site_url):], page)
        u = urlsplit(url)
        if u.scheme or u.netloc or not u.path or u.path.startswith('/'): return url
        target = (base/unquote(u.path)).resolve()
        frag = f'#{u.fragment}' if u.fragment else ''
        if target in self.pages: return _rel(self.pages[target] + frag, page)
        if not target.is_file() or not target.is_relative_to(self.repo): return url  # broken: left for the link check
        rel = target.relative_to(self.repo).as_posix()
        copy = self.out/'repo'/rel
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(target, copy)
        return _rel(f'repo/{rel}{frag}', page)

    def rewrite(self, body: str, page: str, base: Path) -> str:
        def doc(m):
            url = html.unescape(m.group(1))
            if self.site_url == '/' or not url.startswith(self.site_url): return m.group(0)
            new = self.doc_link(url, page)
            if new is not None: return f'<a href="{html.escape(new)}">{m.group(2)}</a>'
            self.unlinked.append(f'{page}: {re.sub("<[^>]+>", "", m.group(2))}')
            return m.group(2)
        body = DOC_LINK.sub(doc, body)
        return PAGE_ATTRS.sub(lambda m: m.group(1) + html.escape(self(html.unescape(m.group(2)), page, base)) + m.group(3), body)


def inline(text: str) -> str:
    "A title as HTML: escaped, with `code` spans."
    return re.sub(r'`([^`]+)`', r'<code>\1</code>', html.escape(text))


def sidebar(entries: list[tuple[str, str]], current: str) -> str:
    "The navigation list: top-level pages, then one section per folder."
    up = '../' * current.count('/')
    items, section = [], None
    for page, title in entries:
        folder = page.rpartition('/')[0]
        if folder != section:
            if section is not None or folder: items.append(f'<li class="section">{html.escape(folder.replace("_", " ").title())}</li>')
            section = folder
        cls = ' class="current"' if page == current else ''
        items.append(f'<li{cls}><a href="{up}{page}">{inline(title)}</a></li>')
    return '<ul>\n' + '\n'.join(items) + '\n</ul>'


TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{plain_title} – {site}</title>
<link rel="stylesheet" href="{up}style.css">
</head>
<body>
<nav class="sidebar"><a class="brand" href="{up}index.html">{site}</a>
{nav}
</nav>
<main>
<header><h1 class="title">{title}</h1>{description}</header>
{body}
<footer>Generated from <code>{source}</code> by <code>scripts/make_docs.py</code>: edit the notebook, not this page.</footer>
</main>
</body>
</html>
"""

CSS = """body { margin: 0; font: 16px/1.55 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; display: flex; }
.sidebar { width: 15rem; flex: none; padding: 1rem; border-right: 1px solid #ddd; height: 100vh; position: sticky; top: 0; overflow-y: auto;
  box-sizing: border-box; font-size: 0.92rem; }
.sidebar .brand { font-weight: 700; font-size: 1.2rem; text-decoration: none; color: #222; }
.sidebar ul { list-style: none; padding: 0; } .sidebar li { margin: 0.2rem 0; } .sidebar a { text-decoration: none; color: #2a6db0; }
.sidebar li.section { margin-top: 0.8rem; font-weight: 600; color: #555; } .sidebar li.current a { font-weight: 700; color: #222; }
main { max-width: 60rem; padding: 1rem 2rem 4rem; min-width: 0; }
header .description { color: #555; font-size: 1.1rem; }
pre { background: #f6f8fa; padding: 0.6rem 0.8rem; overflow-x: auto; border-radius: 4px; font-size: 0.88rem; }
code { font-size: 0.92em; } table { border-collapse: collapse; } td, th { border: 1px solid #ddd; padding: 0.2rem 0.5rem; }
.input_area pre { border-left: 3px solid #c9d6e3; } .output_area pre { background: #fff; border: 1px solid #eee; }
.anchor-link { visibility: hidden; margin-left: 0.3rem; text-decoration: none; } h1:hover .anchor-link, h2:hover .anchor-link,
h3:hover .anchor-link, h4:hover .anchor-link { visibility: visible; }
.output_markdown hr { border: none; border-top: 1px solid #ddd; margin-top: 2rem; }
.output_markdown hr + p a[href*="/blob/"] { float: right; font-size: smaller; }
img { max-width: 100%; } footer { margin-top: 3rem; color: #777; font-size: 0.85rem; }
"""


def site_url() -> str:
    "This site's published address, as nbdev writes it into doc links (`doc_host` + `doc_baseurl`)."
    from nbdev.config import get_config
    cfg = get_config()
    return cfg.get('doc_host', '') + cfg.get('doc_baseurl', '')


def build(out: Path = ROOT/'_docs', nbs: Path = ROOT/'nbs', workers: int = 2, verbose: bool = False) -> list[str]:
    "Build the site into `out` (replaced); returns the pages written."
    from pygments.formatters import HtmlFormatter
    t0 = time.perf_counter()
    files = notebooks(nbs)
    pages = {f.resolve(): page_name(f, nbs) for f in files}
    parts = pages_html(files, workers, verbose)
    for f, p in zip(files, parts): p.update(src=f, page=pages[f.resolve()], title=p['title'] or f.stem)
    entries = [(p['page'], p['title']) for p in parts]
    with tempfile.TemporaryDirectory(prefix='finetune-docs-') as tmp:
        staged = Path(tmp)/'site'
        staged.mkdir()
        linker = Linker(site_url(), pages, {p['page']: set(IDS.findall(p['body'])) for p in parts}, staged)
        for p in parts:
            f, name = p['src'], p['page']
            base = ROOT if f.resolve() == (nbs/'index.ipynb').resolve() else f.parent.resolve()  # index.ipynb is README.md's source
            text = TEMPLATE.format(title=inline(p['title']), plain_title=html.escape(p['title'].replace('`', '')), site='finetune',
                                   up='../' * name.count('/'), nav=sidebar(entries, name), description=linker.rewrite(p['description'], name, base),
                                   body=linker.rewrite(p['body'], name, base), source=f.relative_to(nbs.parent).as_posix())
            dest = staged/name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(text, encoding='utf-8')
        (staged/'style.css').write_text(CSS + HtmlFormatter(style='default').get_style_defs('.highlight') + '\n', encoding='utf-8')
        (staged/'.nojekyll').write_text('')  # GitHub Pages: serve folders as they are
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(staged, out)
    _notes(linker.unlinked, "of nbdev's doc links name something no page documents (private, or a method without its own "
           "show_doc) and were left as plain text", verbose)
    print(f'docs: {len(parts)} pages in {out} ({time.perf_counter() - t0:.0f}s)')
    return [p['page'] for p in parts]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--out', type=Path, default=ROOT/'_docs', help='site folder (replaced; default: _docs)')
    ap.add_argument('--workers', type=int, default=min(2, os.cpu_count() or 1), help='processes running nbdev\'s processor')
    ap.add_argument('-v', '--verbose', action='store_true', help='list the notes, not just count them')
    args = ap.parse_args(argv)
    os.chdir(ROOT)  # nbdev reads pyproject.toml from the working folder up
    build(args.out.resolve(), workers=args.workers, verbose=args.verbose)


if __name__ == '__main__':
    sys.exit(main())
