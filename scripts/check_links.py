"""Check the links of a built HTML site (default `_docs/`): every internal link must reach a file, and its `#anchor` an id there.

`python scripts/check_links.py [SITE]` exits 1 listing each broken link as `page: link (why)`. Checked: `href` and `src` of
every element, relative to the page (or to SITE for `/path`); a link's `#anchor` must be an `id` (or an `<a name>`) on the
target page when that is an HTML page. External links (http, https, `//host`) are listed, not fetched (no network here);
`mailto:`, `tel:`, `data:` and `javascript:` links are skipped.
"""
import argparse, sys
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

LINK_ATTRS = {'href', 'src'}
SKIP_SCHEMES = {'mailto', 'tel', 'data', 'javascript'}


class _Page(HTMLParser):
    "The ids and the links (`href`/`src` values) of one HTML page."
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids, self.links = set(), []
    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if v is None: continue
            if k == 'id' or (k == 'name' and tag == 'a'): self.ids.add(v)
            if k in LINK_ATTRS: self.links.append(v.strip())
    handle_startendtag = handle_starttag


def parse(path: Path) -> _Page:
    p = _Page()
    p.feed(path.read_text(encoding='utf-8', errors='replace'))
    p.close()
    return p


def check(site: Path) -> tuple[list[str], Counter, int]:
    "Broken internal links as `page: link (why)`, external links (without their `#fragment`) counted, and internal links checked."
    site = Path(site).resolve()
    if not site.is_dir(): raise SystemExit(f'check_links: {site} is not a folder: build the site first (`make docs`)')
    pages = {p: parse(p) for p in sorted(site.rglob('*.html'))}
    broken, external, n = [], Counter(), 0
    for page, parsed in pages.items():
        name = page.relative_to(site).as_posix()
        for link in parsed.links:
            u = urlsplit(link)
            if u.scheme in ('http', 'https') or (not u.scheme and u.netloc):
                external[u._replace(fragment='').geturl()] += 1; continue
            if u.scheme in SKIP_SCHEMES: continue
            n += 1
            if u.scheme: broken.append(f'{name}: {link} (a {u.scheme}: link cannot work on the published site)'); continue
            if not u.path: target = page
            elif u.path.startswith('/'): target = (site/unquote(u.path).lstrip('/')).resolve()
            else: target = (page.parent/unquote(u.path)).resolve()
            if not target.is_relative_to(site): broken.append(f'{name}: {link} (outside the site folder)'); continue
            if target.is_dir(): target = target/'index.html'
            if not target.is_file(): broken.append(f'{name}: {link} (no such file)'); continue
            if u.fragment and target.suffix == '.html':
                ids = pages[target].ids if target in pages else parse(target).ids
                if unquote(u.fragment) not in ids:
                    where = 'this page' if target == page else target.relative_to(site).as_posix()
                    broken.append(f'{name}: {link} (no id "{unquote(u.fragment)}" on {where})')
    return broken, external, n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('site', nargs='?', default=Path(__file__).resolve().parent.parent/'_docs', type=Path, help='site folder (default: _docs)')
    ap.add_argument('-q', '--quiet', action='store_true', help='do not list the external links')
    args = ap.parse_args(argv)
    broken, external, n = check(args.site)
    if external and not args.quiet:
        print(f'External links, not fetched ({len(external)} addresses):')
        for url, k in sorted(external.items()): print(f'  {url}' + (f'  (x{k})' if k > 1 else ''))
    if broken:
        print(f'{len(broken)} broken link(s) in {args.site}:')
        for b in broken: print(f'  {b}')
        return 1
    print(f'links: {n} internal links in {args.site} all resolve; {sum(external.values())} external links not fetched')
    return 0


if __name__ == '__main__':
    sys.exit(main())
