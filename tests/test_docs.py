"""The docs hold together: every relative link in README.md and docs/ names a
file that exists (and a heading of it, when the link has an anchor), and the
README stays a front door."""
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / 'README.md'] + sorted((ROOT / 'docs').rglob('*.md'))
LINK = re.compile(r'!?\[[^\]]*\]\(([^()\s]+)\)')
FENCE = re.compile(r'^\s*(```|~~~)')


def prose_lines(text):
  """The lines outside fenced code blocks, inline code spans blanked."""
  inside = False
  for line in text.splitlines():
    if FENCE.match(line):
      inside = not inside
      continue
    if not inside and not line.startswith('    '):
      yield re.sub(r'`[^`]*`', '``', line)


def slug(heading):
  """GitHub's anchor for a heading: lower case, punctuation dropped, spaces
  to hyphens (backticks and other marks go, hyphens and underscores stay)."""
  text = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', heading.strip().lower())
  text = re.sub(r'[^\w\- ]', '', text)
  return text.replace(' ', '-')


def anchors(path):
  """The anchors of a Markdown file's headings, numbered on repeats."""
  seen, out = {}, set()
  inside = False
  for line in path.read_text(encoding='utf-8').splitlines():
    if FENCE.match(line):
      inside = not inside
      continue
    m = re.match(r'#{1,6}\s+(.*)', line)
    if m and not inside:
      base = slug(m.group(1))
      n = seen.get(base, 0)
      seen[base] = n + 1
      out.add(base if n == 0 else f'{base}-{n}')
  return out


def relative_links(page):
  for line in prose_lines(page.read_text(encoding='utf-8')):
    for target in LINK.findall(line):
      if not re.match(r'[a-z][a-z0-9+.-]*:', target):   # http:, mailto:, ...
        yield target


def test_the_slug_follows_github():
  assert slug('The HTTP server under concurrent clients (`--what=serve`)') == (
      'the-http-server-under-concurrent-clients---whatserve')
  assert slug("ADD-GCN head's share of the train step (ResNet-101, 448 px)") == (
      'add-gcn-heads-share-of-the-train-step-resnet-101-448-px')


def test_the_link_checker_sees_a_broken_link(tmp_path):
  page = tmp_path / 'a.md'
  page.write_text('# Top\n\n[x](b.md#top) `[y](c.md)`\n```\n[z](d.md)\n```\n')
  assert list(relative_links(page)) == ['b.md#top']
  assert anchors(page) == {'top'}


@pytest.mark.parametrize('page', PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
  broken = []
  for target in relative_links(page):
    path, _, anchor = target.partition('#')
    dest = (page.parent / path).resolve() if path else page
    if not dest.exists():
      broken.append(f'{target}: no file {dest}')
    elif anchor and dest.suffix == '.md' and anchor not in anchors(dest):
      broken.append(f'{target}: no heading #{anchor} in {dest.name}')
  assert not broken, f'{page.relative_to(ROOT)}: ' + '; '.join(broken)


def test_every_docs_page_is_linked_from_the_readme_or_docs():
  linked = set()
  for page in PAGES:
    for target in relative_links(page):
      path = target.partition('#')[0]
      if path:
        linked.add((page.parent / path).resolve())
  orphans = [str(p.relative_to(ROOT)) for p in PAGES[1:] if p not in linked]
  assert not orphans, f'docs pages no link reaches: {orphans}'


def test_the_readme_is_a_front_door():
  size = (ROOT / 'README.md').stat().st_size
  assert size < 12 * 1024, f'README.md is {size} bytes; move detail to docs/'
