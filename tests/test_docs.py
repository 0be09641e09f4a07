"The docs site tools: the link checker finds exactly the broken links, and the site builder's link rules (no notebook run here)."
import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


check_links, make_docs = _script("check_links"), _script("make_docs")


def _site(d: Path, links: str) -> Path:
    "A small site: index.html with `links`, a page with an anchor, a sub-folder page, an image."
    (d / "sub").mkdir(parents=True)
    (d / "index.html").write_text(f'<html><body><h1 id="top">Top</h1>{links}</body></html>')
    (d / "page.html").write_text('<html><body><h2 id="here">Here</h2><a name="old">old</a><a href="index.html#top">up</a></body></html>')
    (d / "sub" / "index.html").write_text('<html><body><a href="../page.html">back</a><img src="/pic.png"></body></html>')
    (d / "pic.png").write_bytes(b"\x89PNG")
    return d


GOOD = ('<a href="page.html#here">a</a><a href="page.html#old">b</a><a href="#top">c</a><a href="sub/">d</a>'
        '<img src="pic.png"><a href="https://example.com/x#y">e</a><a href="mailto:a@b.c">f</a>')


def test_check_links_reports_exactly_the_broken_ones(tmp_path):
    site = _site(tmp_path / "site", GOOD + '<a href="page.html#gone">g</a><a href="nope.html">h</a><a href="../outside.html">i</a>'
                 '<a href="#nowhere">j</a>')
    broken, external, n = check_links.check(site)
    assert broken == ['index.html: page.html#gone (no id "gone" on page.html)', "index.html: nope.html (no such file)",
                      "index.html: ../outside.html (outside the site folder)", 'index.html: #nowhere (no id "nowhere" on this page)']
    assert external == {"https://example.com/x": 1}  # listed without its fragment, never fetched
    assert n == 12  # every internal href and src on the three pages (mailto: skipped, external counted apart)


def test_check_links_cli_fails_on_a_broken_link_and_passes_without(tmp_path):
    bad = _site(tmp_path / "bad", GOOD + '<a href="page.html#gone">g</a>')
    r = subprocess.run([sys.executable, ROOT / "scripts" / "check_links.py", bad], capture_output=True, text=True)
    assert r.returncode == 1 and "1 broken link(s)" in r.stdout and "page.html#gone" in r.stdout, r.stdout
    assert "https://example.com/x" in r.stdout  # external links are listed
    good = _site(tmp_path / "good", GOOD)
    r = subprocess.run([sys.executable, ROOT / "scripts" / "check_links.py", good, "-q"], capture_output=True, text=True)
    assert r.returncode == 0 and "all resolve" in r.stdout, r.stdout
    r = subprocess.run([sys.executable, ROOT / "scripts" / "check_links.py", tmp_path / "missing"], capture_output=True, text=True)
    assert r.returncode != 0 and "build the site first" in r.stderr


def test_headings_get_nbdevs_anchors():
    body = ('<h3 id="Trainer.fit">Trainer.fit<a class="anchor-link" href="#Trainer.fit">¶</a></h3>'
            '<h2 id="What\'s-next?">What\'s next?<a class="anchor-link" href="#What\'s-next?">¶</a></h2>'
            '<h3 id="trainer.fit">x<a class="anchor-link" href="#trainer.fit">¶</a></h3>')
    out = make_docs.fix_headings(body)
    assert '<h3 id="trainer.fit">' in out and 'href="#trainer.fit"' in out
    assert '<h2 id="whats-next">' in out and '<h3 id="trainer.fit-1">' in out  # punctuation dropped; ids unique on the page


def test_links_rewritten_for_the_site(tmp_path):
    repo, out = tmp_path / "repo", tmp_path / "out"
    (repo / "nbs" / "tutorials").mkdir(parents=True)
    (repo / "docs").mkdir()
    (repo / "docs" / "chart.png").write_bytes(b"png")
    pages = {(repo / "nbs" / "05_train.ipynb").resolve(): "train.html",
             (repo / "nbs" / "tutorials" / "quickstart.ipynb").resolve(): "tutorials/quickstart.html"}
    ids = {"train.html": {"trainer", "fit"}, "tutorials/quickstart.html": set()}
    lk = make_docs.Linker("https://x.github.io/finetune", pages, ids, out, repo=repo)
    site = "https://x.github.io/finetune/"
    body = (f'<a href="{site}train.html#trainer.validate"><code>Trainer.validate</code></a>'  # a method without its own section
            f'<a href="{site}train.html#_private"><code>_private</code></a>'  # documented nowhere: plain text
            f'<a href="{site}train.html#fit">fit</a>'
            '<a href="quickstart.ipynb#step-2">qs</a><a href="../05_train.ipynb#fit">nb</a><img src="../../docs/chart.png"><a href="../../docs/none.md">n</a>'
            '<a href="https://example.com">e</a>')
    got = lk.rewrite(body, "tutorials/quickstart.html", repo / "nbs" / "tutorials")
    assert got == ('<a href="../train.html#trainer"><code>Trainer.validate</code></a><code>_private</code>'
                   '<a href="../train.html#fit">fit</a><a href="#step-2">qs</a><a href="../train.html#fit">nb</a><img src="../repo/docs/chart.png">'
                   '<a href="../../docs/none.md">n</a><a href="https://example.com">e</a>')  # a missing file is left for the check
    assert (out / "repo" / "docs" / "chart.png").read_bytes() == b"png"
    assert lk.unlinked == ["tutorials/quickstart.html: _private"]


def test_title_cell_split_keeps_the_rest():
    from fastcore.nbio import dict2nb
    nb = dict2nb({"cells": [{"cell_type": "markdown", "metadata": {}, "source": "# finetune\n\n> Fine-tune.\n\n## Install\n- a: b\n"},
                            {"cell_type": "code", "metadata": {}, "source": "1", "outputs": [], "execution_count": None}],
                  "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
    assert make_docs.split_title(nb)
    assert [c.source for c in nb.cells] == ["# finetune\n\n> Fine-tune.", "## Install\n- a: b", "1"]
    assert not make_docs.split_title(nb)  # already only a title and a description


def test_render_gives_nbdev_anchors_and_drops_quarto_syntax():
    "A processed notebook through the real nbconvert: nbdev's heading anchors, `#| echo: false` honoured, Quarto attributes gone."
    md = "---\n\n[source](https://github.com/x/y/blob/main/f.py#L3){target=\"_blank\" style=\"float:right\"}\n\n### Trainer.fit\n\n*Fit.*"
    nb = {"cells": [{"cell_type": "raw", "metadata": {}, "source": "---\ntitle: Training\ndescription: 'The `Trainer`.'\n---\n"},
                    {"cell_type": "markdown", "metadata": {}, "source": "## A section"},
                    {"cell_type": "code", "metadata": {}, "source": "#| echo: false\n#| output: asis\nshow_doc(Trainer.fit)",
                     "execution_count": 1, "outputs": [{"output_type": "execute_result", "execution_count": 1, "metadata": {},
                                                        "data": {"text/markdown": md, "text/plain": "<md>"}}]},
                    {"cell_type": "code", "metadata": {}, "source": "#| include: false\nsecret = 1", "execution_count": 2, "outputs": []},
                    {"cell_type": "code", "metadata": {}, "source": "x = 1", "execution_count": 3, "outputs": []}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    r = make_docs.render(nb)
    assert r["title"] == "Training" and "<code>Trainer</code>" in r["description"]
    body = r["body"]
    assert 'id="a-section"' in body and 'id="trainer.fit"' in body  # the anchors `Trainer.fit` doc links point at
    assert "show_doc" not in body and "secret" not in body and "#|" not in body and "{target=" not in body
    assert 'href="https://github.com/x/y/blob/main/f.py#L3"' in body and '<span class="n">x</span>' in body
