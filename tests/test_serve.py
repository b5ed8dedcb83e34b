"""The tagging page and its API: in-process on a fake tagger (fast), then
`python -m jaxtag.serve` on a real bundle and in headless Chromium (slow).
The server's limits under bad input and load: tests/test_serve_probes.py."""
import io
import json
import os
import shutil
import subprocess
import sys

import pytest
from absl import flags
from PIL import Image

from jaxtag import serve
from serve_fixtures import FakeTagger
from serve_fixtures import get
from serve_fixtures import png as _png
from serve_fixtures import post
from serve_fixtures import request
from serve_fixtures import thread_server

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _post(url, body, headers=None):
  """(status, JSON body) of a POST, error statuses included."""
  status, _, record = post(url, body, headers)
  return status, record


def _get(url):
  status, _, body = get(url)
  return status, body


@pytest.fixture
def fake_server():
  with thread_server(max_mb=0.01, max_megapixels=0.01) as (url, _):
    yield url


def test_decode_image_refuses_with_statuses():
  ok = serve.decode_image(_png(), max_bytes=10**6, max_pixels=10**6)
  assert ok.mode == 'RGB' and ok.size == (64, 48)
  cases = [(b'', 10**6, 400, 'no image'),
           (b'not an image', 10**6, 415, 'not an image'),
           (_png(), 100, 413, 'at most 100 bytes'),
           (_png(200, 100), 10**6, 413, 'megapixels')]  # 20,000 pixels
  for body, max_bytes, status, words in cases:
    with pytest.raises(serve.RequestError, match=words) as error:
      serve.decode_image(body, max_bytes=max_bytes, max_pixels=10_000)
    assert error.value.status == status


def test_api_on_a_fake_tagger(fake_server):
  body = _png(colour=(255, 0, 0))
  expected = FakeTagger().scores([Image.open(io.BytesIO(body))])[0]
  status, record = _post(fake_server + '/tag', body,
                         {'X-Filename': 'red%20cat.png'})
  assert status == 200
  assert record['file'] == 'red cat.png'
  assert list(record) == ['file', 'rating', 'general', 'character']
  names = FakeTagger.names
  # Every score s ** i; tags at or above their threshold are listed.
  kept = {names[i]: float(expected[i]) for i in (4, 5, 6, 7)
          if expected[i] >= FakeTagger.limits[i]}
  assert {**record['general'], **record['character']} == pytest.approx(kept)
  assert record['rating'] == pytest.approx(
      {names[i]: float(expected[i]) for i in range(4)})

  status, page = _post(fake_server + '/tag?all=1', body)
  assert status == 200
  assert page['thresholds'] == {'rating': 0.0, 'general': 0.5,
                                'character': 0.9}
  assert page['scores']['general'] == pytest.approx(
      {names[i]: float(expected[i]) for i in (4, 5, 6)
       if expected[i] >= serve.PAGE_MIN_SCORE})


def test_api_errors_keep_the_server_serving(fake_server):
  assert _post(fake_server + '/tag', b'')[0] == 400
  status, record = _post(fake_server + '/tag', b'GIF89a broken')
  assert status == 415 and 'not an image' in record['error']
  assert _post(fake_server + '/tag', b'\0' * 20_000)[0] == 413
  status, record = _post(fake_server + '/tag', _png(200, 100))
  assert status == 413 and 'megapixels' in record['error']
  assert _post(fake_server + '/other', _png())[0] == 404
  status, record = _get(fake_server + '/tag')
  assert status == 404 and 'POST /tag' in record['error']
  status, page = _get(fake_server + '/')
  assert status == 200 and b'<input type="file" id="file"' in page
  assert b'http://' not in page and b'https://' not in page  # no CDN
  assert _post(fake_server + '/tag', _png())[0] == 200


def test_api_key_guards_the_api_but_not_the_page():
  key = 'a-key-of-some-length'
  with thread_server(api_key=key) as (url, _):
    status, headers, record = post(url + '/tag', _png())
    assert (status, record) == (401, {
        'error': 'This server needs its API key: send "Authorization: Bearer '
                 'KEY" (or "X-API-Key: KEY").'})
    assert headers['www-authenticate'] == 'Bearer'
    assert post(url + '/tag', _png(), {'Authorization': 'Bearer nope'}
                )[0] == 401
    assert post(url + '/tag', _png(), {'Authorization': f'Bearer {key}'}
                )[0] == 200
    assert post(url + '/tag', _png(), {'X-API-Key': key})[0] == 200
    assert get(url + '/metrics')[0] == 401
    assert get(url + '/metrics', {'X-API-Key': key})[0] == 200
    assert get(url + '/health')[0] == 200
    assert get(url + '/')[0] == 200


def test_cors_is_off_unless_an_origin_is_named():
  preflight = {'Origin': 'http://example.test',
               'Access-Control-Request-Method': 'POST'}
  with thread_server() as (url, _):
    status, headers, _ = request('OPTIONS', url + '/tag', headers=preflight)
    assert status == 404 and 'access-control-allow-origin' not in headers
    _, headers, _ = post(url + '/tag', _png(),
                         {'Origin': 'http://example.test'})
    assert 'access-control-allow-origin' not in headers
  with thread_server(cors_origins=('http://example.test',)) as (url, _):
    status, headers, _ = request('OPTIONS', url + '/tag', headers=preflight)
    assert status == 200
    assert headers['access-control-allow-origin'] == 'http://example.test'
    _, headers, _ = post(url + '/tag', _png(),
                         {'Origin': 'http://example.test'})
    assert headers['access-control-allow-origin'] == 'http://example.test'


def test_flags_bind_to_localhost_by_default():
  values = flags.FlagValues()
  serve.define_flags(values)
  values(['serve', '--bundle', 'b'])
  assert values.host == '127.0.0.1'
  assert not values.no_auth and values.api_key is None
  assert values.cors_origin == []


@pytest.mark.slow
def test_a_public_address_without_a_key_is_refused_before_binding(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'jaxtag.serve', '--bundle', str(tmp_path),
       '--host', '0.0.0.0', '--port', '0'],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1
  assert result.stderr.strip().endswith(
      '--host 0.0.0.0 can be reached from other machines, so the API needs a '
      'key: pass --api_key=KEY (clients send "Authorization: Bearer KEY"; put '
      'the flag in a --flagfile to keep it out of the process list), or '
      '--no_auth to serve anyone who can connect.')


@pytest.mark.slow
def test_a_captioner_is_served_through_the_batcher(tiny_captioner_run,
                                                   tmp_path):
  from concurrent import futures
  from jaxtag.serving import convert
  from jaxtag.serving import tagger as tagger_lib
  workdir, _ = tiny_captioner_run
  out = str(tmp_path / 'bundle')
  convert.convert(workdir, out)
  tagger = tagger_lib.Tagger(out, batch_size=1)
  bodies = [_png(48 + 8 * i, 40, (60 * i, 200 - 50 * i, 90)) for i in range(3)]
  want = tagger.tag([Image.open(io.BytesIO(b)) for b in bodies])
  with thread_server(tagger, max_batch=4) as (url, _):
    with futures.ThreadPoolExecutor(3) as pool:
      answers = list(pool.map(
          lambda i: post(url + '/tag?all=1', bodies[i],
                         {'X-Filename': f'{i}.png'}), range(3)))
  assert [a[2] for a in answers] == [
      {'file': f'{i}.png', 'caption': w['caption']} for i, w in enumerate(want)]


# ------------------------------------------------ a real bundle (slow) ---


@pytest.fixture(scope='module')
def bundle_dir(tiny_data_dir, tmp_path_factory):
  """configs/default.py:tiny trained briefly and converted to a bundle."""
  from jaxtag import config as config_lib
  from jaxtag import train
  config = config_lib.load_config_file('configs/default.py:tiny')
  config.dataset.data_dir = tiny_data_dir
  config.eval.plots = False
  root = tmp_path_factory.mktemp('serve')
  train.train_and_evaluate(config, str(root / 'run'))
  subprocess.run(
      [sys.executable, '-m', 'jaxtag.serving.convert', '--workdir',
       str(root / 'run'), '--out', str(root / 'bundle')],
      check=True, cwd=REPO, timeout=300)
  return str(root / 'bundle')


@pytest.fixture(scope='module')
def server(bundle_dir, tmp_path_factory):
  """`python -m jaxtag.serve` on a free port; yields its address."""
  from serve_fixtures import process_server
  log = tmp_path_factory.mktemp('serve_log') / 'stderr.txt'
  with process_server(bundle_dir, log, '--max_mb', '0.05',
                      '--max_megapixels', '0.5') as (url, _):
    yield url


@pytest.mark.slow
def test_api_tags_an_image_as_the_tagger_does(server, bundle_dir):
  from jaxtag.serving import tagger as tagger_lib
  body = _png(96, 80)
  status, record = _post(server + '/tag', body, {'X-Filename': 'a.png'})
  assert status == 200
  expected = tagger_lib.Tagger(bundle_dir, batch_size=1).tag(
      [Image.open(io.BytesIO(body))])[0]
  assert record['file'] == 'a.png'
  for group in ('rating', 'general', 'character'):
    assert list(record[group]) == list(expected[group])
    assert record[group] == pytest.approx(expected[group], abs=1e-6)


@pytest.mark.slow
def test_api_rejects_bad_requests_and_keeps_serving(server):
  assert _post(server + '/tag', b'')[0] == 400
  assert _post(server + '/tag', b'plain text, not an image')[0] == 415
  assert _post(server + '/tag', os.urandom(60_000))[0] == 413
  status, record = _post(server + '/tag', _png(1000, 800))
  assert status == 413 and 'megapixels' in record['error']
  status, health = _get(server + '/health')
  assert status == 200 and health['ok']
  assert _post(server + '/tag', _png())[0] == 200


def _browser():
  """Headless Chromium through Selenium and Debian's chromedriver."""
  from selenium import webdriver
  from selenium.webdriver.chrome.options import Options
  from selenium.webdriver.chrome.service import Service
  binary = shutil.which('chromium') or shutil.which('chromium-browser')
  driver = shutil.which('chromedriver')
  if not (binary and driver):
    pytest.fail('Chromium and chromedriver are needed for the page test: '
                'apt-get install -y chromium chromium-driver')
  options = Options()
  options.binary_location = binary
  for arg in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage',
              '--disable-gpu', '--window-size=1280,900'):
    options.add_argument(arg)
  return webdriver.Chrome(options=options, service=Service(driver))


@pytest.mark.slow
def test_page_in_headless_chromium(server, tmp_path):
  from selenium.webdriver.common.by import By
  from selenium.webdriver.common.keys import Keys
  from selenium.webdriver.support.ui import WebDriverWait
  image = tmp_path / 'drawn.png'
  image.write_bytes(_png(96, 80))
  not_image = tmp_path / 'notes.txt'
  not_image.write_text('not an image')
  _, api = _post(server + '/tag?all=1', image.read_bytes())
  browser = _browser()
  try:
    browser.get(server + '/')
    browser.find_element(By.ID, 'file').send_keys(str(image))
    listed = '#general li[data-tag]'
    WebDriverWait(browser, 60).until(
        lambda b: b.find_elements(By.CSS_SELECTOR, listed))

    def shown(category):
      return {e.get_attribute('data-tag'): float(e.get_attribute('data-score'))
              for e in browser.find_elements(
                  By.CSS_SELECTOR, f'#{category} li[data-tag]')}

    slider = browser.find_element(By.CSS_SELECTOR,
                                  '#general input[type=range]')
    start = float(slider.get_attribute('value'))
    assert start == pytest.approx(api['thresholds']['general'])
    general = shown('general')
    assert general == pytest.approx(
        {t: s for t, s in api['scores']['general'].items() if s >= start})
    assert list(shown('rating')) == sorted(
        api['rating'], key=lambda t: -api['rating'][t])
    caption = browser.find_element(By.ID, 'caption').get_attribute('value')
    assert caption.split(', ')[:len(general)] == list(general)
    browser.save_screenshot(str(tmp_path / 'page.png'))

    # Moving the slider up (the keyboard's arrows) shrinks the list live.
    slider.send_keys(Keys.ARROW_RIGHT * 10)
    raised = float(slider.get_attribute('value'))
    assert raised == pytest.approx(min(start + 0.1, 1.0))
    fewer = shown('general')
    assert fewer == pytest.approx(
        {t: s for t, s in general.items() if s >= raised})
    assert len(fewer) < len(general)

    browser.find_element(By.ID, 'file').send_keys(str(not_image))
    error = browser.find_element(By.ID, 'error')
    WebDriverWait(browser, 30).until(lambda b: error.is_displayed())
    assert error.text.startswith('Error 415')
    assert not shown('general')
    browser.save_screenshot(str(tmp_path / 'error.png'))
  finally:
    browser.quit()
  with Image.open(tmp_path / 'page.png') as shot:
    assert shot.size[0] >= 1000
