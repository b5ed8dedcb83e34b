r"""A local web page that tags an image, and its JSON API.

  python -m jaxtag.serve --bundle BUNDLE [--port 8000] [--host 127.0.0.1]

Open http://127.0.0.1:8000/, choose or drop an image: the page shows the
rating, character and general tags with their scores as bars, a threshold
slider per category that filters the lists as it moves, and a button that
copies the caption (tags joined by ", ", general then character, as
`python -m jaxtag.tag --format txt` writes it).

API:
- `POST /tag` with the image file's bytes as the body: 200 and the record
  of `python -m jaxtag.tag --format json` for that image (`file`, `rating`,
  `general`, `character`: tag -> score). `?all=1` adds `scores` (every tag
  of each category scoring at least 0.01, for the page's sliders) and
  `thresholds` (each category's threshold). `X-Filename` names the file.
- Errors: 400 for an empty body, 413 for a body over `--max_mb` or an image
  over `--max_megapixels`, 415 for bytes that are not a decodable image,
  404 for other paths; the body is `{"error": "..."}`. The server keeps
  serving after each.
- `GET /health`: `{"ok": true, "tags": N}`.

The standard library's threaded HTTP server is enough for one person on
their own machine; requests are tagged one at a time. It binds to
127.0.0.1 unless `--host` says otherwise.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import threading
import warnings
from http import server as http_server
from typing import Any
from urllib import parse

import numpy as np
from PIL import Image

# Scores below this are left out of the page's lists (and of ?all=1).
PAGE_MIN_SCORE = 0.01


class RequestError(Exception):
  """A request the server refuses, with its HTTP status."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status


def decode_image(body: bytes, *, max_bytes: int, max_pixels: int):
  """The request body as an RGB PIL image, or a RequestError."""
  from jaxtag.serving import images as images_lib
  if not body:
    raise RequestError(400, 'The request has no image: send the image '
                       "file's bytes as the POST body.")
  if len(body) > max_bytes:
    raise RequestError(413, f'The image is {len(body) / 2**20:.1f} MB; this '
                       f'server takes at most {max_bytes / 2**20:.1f} MB '
                       '(--max_mb).')
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('error', Image.DecompressionBombWarning)
      with Image.open(io.BytesIO(body)) as image:
        pixels = image.size[0] * image.size[1]
        if pixels > max_pixels:
          raise RequestError(
              413, f'The image is {image.size[0]}x{image.size[1]} '
              f'({pixels / 1e6:.1f} megapixels); this server takes at most '
              f'{max_pixels / 1e6:.1f} (--max_megapixels).')
        image.load()
        return images_lib.to_rgb(image)
  except RequestError:
    raise
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise RequestError(413, f'The image is too large to decode: {e}') from e
  except Exception as e:  # pylint: disable=broad-except
    # Pillow raises many types for bytes that are not a (whole) image.
    raise RequestError(415, 'The file is not an image that can be decoded '
                       '(PNG, JPEG, WebP, GIF, BMP, TIFF); Pillow says '
                       f'{type(e).__name__}.') from e


class TagService:
  """A Tagger behind a lock: one image at a time, as the API's records."""

  def __init__(self, tagger):
    self.tagger = tagger
    self._lock = threading.Lock()

  def tag(self, image, filename: str, with_scores: bool) -> dict[str, Any]:
    with self._lock:
      scores = self.tagger.scores([image])
      record = {'file': filename, **self.tagger.results(scores)[0]}
      if self.tagger.task == 'captioning':   # {'file', 'caption'}
        return record
      thresholds = self.tagger.thresholds(scores)
    if with_scores:
      record['scores'], record['thresholds'] = self.page_extras(
          scores[0], thresholds[0])
    return record

  def page_extras(self, scores: np.ndarray, thresholds: np.ndarray):
    """Every tag's score (>= PAGE_MIN_SCORE) and one threshold per category
    (its tags' median: a per-tag policy becomes one slider value)."""
    names = self.tagger.names
    all_scores, by_category = {}, {}
    for group, index in self.tagger.groups.items():
      index = np.asarray(index, np.int64)
      keep = index[scores[index] >= PAGE_MIN_SCORE]
      keep = keep[np.argsort(-scores[keep], kind='stable')]
      all_scores[group] = {names[i]: float(scores[i]) for i in keep}
      if len(index):
        by_category[group] = round(float(np.median(thresholds[index])), 4)
    return all_scores, by_category


def make_handler(service: TagService, *, max_bytes: int, max_pixels: int,
                 page: bytes):

  class Handler(http_server.BaseHTTPRequestHandler):
    server_version = 'jaxtag-serve'

    def log_message(self, fmt, *args):  # one line per request on stderr
      sys.stderr.write('%s %s\n' % (self.address_string(), fmt % args))

    def _send(self, status: int, body: bytes, content_type: str) -> None:
      self.send_response(status)
      self.send_header('Content-Type', content_type)
      self.send_header('Content-Length', str(len(body)))
      self.send_header('Cache-Control', 'no-store')
      self.end_headers()
      self.wfile.write(body)

    def _json(self, status: int, obj) -> None:
      self._send(status, json.dumps(obj).encode(),
                 'application/json; charset=utf-8')

    def do_GET(self):  # noqa: N802  (http.server's name)
      path = parse.urlparse(self.path).path
      if path in ('/', '/index.html'):
        self._send(200, page, 'text/html; charset=utf-8')
      elif path == '/favicon.ico':
        self._send(204, b'', 'image/x-icon')
      elif path == '/health':
        self._json(200, {'ok': True, 'tags': len(service.tagger.names)})
      else:
        self._json(404, {'error': f'No page at {path}; the page is / and '
                                  'the API is POST /tag.'})

    def do_POST(self):  # noqa: N802
      url = parse.urlparse(self.path)
      length = int(self.headers.get('Content-Length') or 0)
      if url.path != '/tag':
        self._discard(length)
        self._json(404, {'error': f'POST {url.path} is not an API; use '
                                  'POST /tag with the image bytes.'})
        return
      try:
        if length > max_bytes:
          self._discard(length)
          raise RequestError(413, f'The image is {length / 2**20:.1f} MB; '
                             'this server takes at most '
                             f'{max_bytes / 2**20:.1f} MB (--max_mb).')
        image = decode_image(self.rfile.read(length), max_bytes=max_bytes,
                             max_pixels=max_pixels)
        query = parse.parse_qs(url.query)
        record = service.tag(
            image, parse.unquote(self.headers.get('X-Filename') or 'upload'),
            with_scores=query.get('all', ['0'])[0] in ('1', 'true'))
      except RequestError as e:
        self._json(e.status, {'error': str(e)})
        return
      self._json(200, record)

    def _discard(self, length: int) -> None:
      """Reads an unwanted body in chunks so the client sees the answer."""
      while length > 0:
        chunk = self.rfile.read(min(length, 1 << 20))
        if not chunk:
          break
        length -= len(chunk)

  return Handler


def make_server(tagger, *, host: str = '127.0.0.1', port: int = 8000,
                max_mb: float = 20.0, max_megapixels: float = 50.0):
  """A ThreadingHTTPServer serving `tagger` (a jaxtag.serving Tagger)."""
  handler = make_handler(TagService(tagger), max_bytes=int(max_mb * 2**20),
                         max_pixels=int(max_megapixels * 1e6),
                         page=PAGE.encode())
  return http_server.ThreadingHTTPServer((host, port), handler)


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog='python -m jaxtag.serve',
      description='A local web page and JSON API that tag an image with a '
                  'jaxtag bundle.')
  parser.add_argument('--bundle', required=True,
                      help='Bundle folder (python -m jaxtag.serving.convert).')
  parser.add_argument('--host', default='127.0.0.1',
                      help='Address to bind (default 127.0.0.1: this '
                           'machine only).')
  parser.add_argument('--port', type=int, default=8000,
                      help='Port (default 8000; 0 picks a free one).')
  parser.add_argument('--max_mb', type=float, default=20.0,
                      help='Largest upload in MB (default 20).')
  parser.add_argument('--max_megapixels', type=float, default=50.0,
                      help='Largest image in megapixels (default 50).')
  parser.add_argument('--policy', default='run',
                      help='Threshold policy of the bundle: run, category, '
                           'f1 or precision_recall (default run).')
  return parser.parse_args(argv)


def main(argv=None) -> None:
  args = parse_args(argv)
  if not os.path.isdir(args.bundle):
    sys.exit(f'--bundle {args.bundle} is not a folder: convert a run first '
             'with `python -m jaxtag.serving.convert --workdir RUN --out '
             'BUNDLE`.')
  from jaxtag.serving import tagger as tagger_lib
  tagger = tagger_lib.Tagger(args.bundle, batch_size=1, policy=args.policy)
  # The first call compiles the model; do it before the first visitor.
  tagger.scores([np.full((32, 32, 3), 255, np.uint8)])
  httpd = make_server(tagger, host=args.host, port=args.port,
                      max_mb=args.max_mb, max_megapixels=args.max_megapixels)
  host, port = httpd.server_address[:2]
  # Tests and scripts read this line to find the port.
  print(f'Serving {args.bundle} on http://{host}:{port}/', flush=True)
  try:
    httpd.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    httpd.server_close()


# The page: inline CSS and JS, nothing fetched from elsewhere.
PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>jaxtag</title>
<style>
  body { font: 15px/1.4 system-ui, sans-serif; margin: 0; color: #222;
         background: #f6f7f9; }
  header { padding: 10px 20px; background: #24292f; color: #fff; }
  header h1 { font-size: 18px; margin: 0; display: inline; }
  header span { opacity: .7; margin-left: 12px; font-size: 13px; }
  main { display: grid; grid-template-columns: minmax(260px, 420px) 1fr;
         gap: 20px; padding: 20px; }
  #drop { border: 2px dashed #8a94a0; border-radius: 8px; padding: 18px;
          text-align: center; background: #fff; cursor: pointer; }
  #drop.over { border-color: #0969da; background: #eef5ff; }
  #preview { max-width: 100%; max-height: 420px; margin-top: 12px;
             display: none; border-radius: 4px; }
  #error { display: none; margin-top: 12px; padding: 10px; border-radius: 6px;
           background: #ffebe9; color: #82071e; border: 1px solid #ff8182; }
  #status { margin-top: 8px; color: #57606a; font-size: 13px; }
  section { background: #fff; border-radius: 8px; padding: 12px 16px;
            margin-bottom: 14px; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
  section h2 { font-size: 15px; margin: 0 0 8px; display: flex;
               align-items: center; gap: 12px; }
  section h2 .count { font-weight: normal; color: #57606a; font-size: 13px; }
  label.slider { font-weight: normal; font-size: 13px; margin-left: auto; }
  input[type=range] { width: 160px; vertical-align: middle; }
  ul { list-style: none; margin: 0; padding: 0; }
  li { display: grid; grid-template-columns: 210px 1fr 52px; gap: 8px;
       align-items: center; padding: 2px 0; }
  li .name { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
  li .bar { height: 12px; background: #e7ebef; border-radius: 6px; }
  li .fill { height: 100%; border-radius: 6px; }
  li .score { text-align: right; font-variant-numeric: tabular-nums; }
  #rating .fill { background: #2da44e; }
  #character .fill { background: #cf222e; }
  #general .fill { background: #0969da; }
  #other .fill { background: #8250df; }
  #caption { width: 100%; box-sizing: border-box; min-height: 60px;
             font: 13px monospace; }
  button { font: inherit; padding: 4px 12px; cursor: pointer; }
  li.empty { display: block; color: #8a94a0; font-size: 13px; }
</style>
</head>
<body>
<header><h1>jaxtag</h1><span>tag an illustration with a local model</span>
</header>
<main>
  <div>
    <div id="drop">
      <b>Drop an image here</b> or <input type="file" id="file"
        accept="image/*">
    </div>
    <div id="error" role="alert"></div>
    <div id="status"></div>
    <img id="preview" alt="the tagged image">
  </div>
  <div id="results">
    <section id="rating"><h2>Rating</h2><ul></ul></section>
    <section id="character" data-category="character"><h2>Character
      <span class="count"></span>
      <label class="slider">threshold <input type="range" min="0" max="1"
        step="0.01" value="0.85"> <output></output></label></h2><ul></ul>
    </section>
    <section id="general" data-category="general"><h2>General
      <span class="count"></span>
      <label class="slider">threshold <input type="range" min="0" max="1"
        step="0.01" value="0.35"> <output></output></label></h2><ul></ul>
    </section>
    <section id="other" data-category="other" hidden><h2>Other
      <span class="count"></span>
      <label class="slider">threshold <input type="range" min="0" max="1"
        step="0.01" value="0.5"> <output></output></label></h2><ul></ul>
    </section>
    <section><h2>Caption <button id="copy" type="button">Copy</button>
      <span class="count" id="copied"></span></h2>
      <textarea id="caption" readonly></textarea></section>
  </div>
</main>
<script>
"use strict";
let result = null;
const $ = (s) => document.querySelector(s);

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.style.display = message ? "block" : "none";
}

function row(name, score) {
  const li = document.createElement("li");
  li.dataset.tag = name;
  li.dataset.score = score;
  li.innerHTML = '<span class="name"></span><span class="bar">' +
    '<span class="fill"></span></span><span class="score"></span>';
  li.querySelector(".name").textContent = name;
  li.querySelector(".name").title = name;
  li.querySelector(".fill").style.width = (100 * score).toFixed(1) + "%";
  li.querySelector(".fill").style.display = "block";
  li.querySelector(".score").textContent = score.toFixed(3);
  return li;
}

function shown(category) {
  if (!result || !result.scores[category]) return [];
  const slider = document.querySelector("#" + category + " input");
  const t = parseFloat(slider.value);
  return Object.entries(result.scores[category]).filter(([, s]) => s >= t);
}

function render() {
  for (const section of document.querySelectorAll("section[data-category]")) {
    const category = section.dataset.category;
    const slider = section.querySelector("input");
    section.querySelector("output").textContent =
      parseFloat(slider.value).toFixed(2);
    const ul = section.querySelector("ul");
    ul.replaceChildren();
    if (!result) continue;
    const tags = shown(category);
    for (const [name, score] of tags) ul.appendChild(row(name, score));
    if (!tags.length) {
      const li = document.createElement("li");
      li.className = "empty";
      li.textContent = "no tag at or above this threshold";
      ul.appendChild(li);
    }
    section.querySelector(".count").textContent =
      tags.length + (tags.length === 1 ? " tag" : " tags");
  }
  const ratings = $("#rating ul");
  ratings.replaceChildren();
  if (result) {
    for (const [name, score] of Object.entries(result.rating)
                                      .sort((a, b) => b[1] - a[1])) {
      ratings.appendChild(row(name, score));
    }
  }
  // The tag command's caption: general, then character, joined by ", ".
  $("#caption").value = ["general", "character"]
    .flatMap((c) => shown(c).map(([name]) => name)).join(", ");
}

async function tagFile(file) {
  showError("");
  if (!file) return;
  $("#status").textContent = "tagging " + file.name + " ...";
  const preview = $("#preview");
  try {
    const response = await fetch("/tag?all=1", {
      method: "POST", body: file,
      headers: {"X-Filename": encodeURIComponent(file.name)}});
    const body = await response.json();
    if (!response.ok) {
      result = null;
      preview.style.display = "none";
      render();
      showError("Error " + response.status + ": " + body.error);
      $("#status").textContent = "";
      return;
    }
    result = body;
    preview.src = URL.createObjectURL(file);
    preview.style.display = "block";
    for (const [category, t] of Object.entries(result.thresholds)) {
      const section = document.querySelector("#" + category);
      if (!section || !section.dataset.category) continue;
      section.hidden = false;
      section.querySelector("input").value = t;
    }
    $("#status").textContent = file.name + ": tagged";
    render();
  } catch (e) {
    showError("The server did not answer: " + e);
    $("#status").textContent = "";
  }
}

$("#file").addEventListener("change", (e) => tagFile(e.target.files[0]));
const drop = $("#drop");
drop.addEventListener("dragover", (e) => {
  e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over");
  tagFile(e.dataTransfer.files[0]);
});
for (const slider of document.querySelectorAll("section input[type=range]")) {
  slider.addEventListener("input", render);
}
$("#copy").addEventListener("click", async () => {
  const text = $("#caption").value;
  try {
    await navigator.clipboard.writeText(text);
  } catch (e) {  // plain http on another host: the older path
    $("#caption").select();
    document.execCommand("copy");
  }
  $("#copied").textContent = "copied " + (text ? text.split(", ").length : 0)
    + " tags";
});
render();
</script>
</body>
</html>
"""


if __name__ == '__main__':
  main()
