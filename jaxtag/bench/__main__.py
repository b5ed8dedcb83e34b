r"""Benchmarks: print figures and write them as JSON.

  python -m jaxtag.bench --config configs/bench_resnet.py:r50_224
  python -m jaxtag.bench --config configs/default.py --pipeline
  python -m jaxtag.bench --config configs/bench_pipeline.py:cpu --pipeline
  python -m jaxtag.bench --what=metrics
  python -m jaxtag.bench --what=predict --config configs/vallet_pixiv.py:synthetic
  python -m jaxtag.bench --what=mlgcn --config configs/bench_resnet.py:r50_224 \
      --config.model.dtype=float32 --steps 2 --time_batch 4
  python -m jaxtag.bench --what=addgcn --config configs/addgcn_danbooru.py \
      --config.model.dtype=float32 --classes=80,1000,5000 --steps 1
  python -m jaxtag.bench --what=serve [--bundle BUNDLE] [--concurrency 1,8,64]
  python -m jaxtag.bench --what=serve --serve_args=--max_batch=1  # no batching
  python -m jaxtag.bench --what=flops [--num_classes 10861]  # every family
  python -m jaxtag.bench --what=flops --families=vit_base_patch16 \
      --image_sizes=224,384,448 --flops_from=lowered,compiled
  python -m jaxtag.bench --what=decode [--steps 5]
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m jaxtag.bench \
      --what=memory --config configs/wd_v3.py:eva02_large \
      --config.batch_size=32 --config.mesh.model=8 --num_classes=10861
  python -m jaxtag.bench --what=tag [--config CONFIG] [--steps 3]
"""
import json

import jax

from absl import app
from absl import flags
from ml_collections import config_flags

from jaxtag import storage

FLAGS = flags.FLAGS


def _define_flags():
  """Defined only when run as a command, not when imported."""
  config_flags.DEFINE_config_file(
      'config', None, 'Config file of the model to benchmark.',
      lock_config=True)
  flags.DEFINE_enum('what', 'train',
                    ['train', 'metrics', 'predict', 'mlgcn', 'addgcn',
                     'serve', 'flops', 'decode', 'tag', 'memory'],
                    'train: the train step (and the pipeline with '
                    '--pipeline); metrics: the metric suite at 50k x 10k;'
                    ' predict: FLOPs and time of the prediction path; '
                    'mlgcn: the ML-GCN head\'s share of the train step '
                    '(--classes) and BCOO vs dense graph products; '
                    'addgcn: the ADD-GCN head\'s share of the train '
                    'step, exact vs low-rank graphs (--classes); '
                    'serve: python -m jaxtag.serve under 1, 8 and 64 '
                    'concurrent clients; '
                    'flops: forward and forward+backward FLOPs per '
                    'image of the timm-layout backbones '
                    '(jaxtag/bench/flops.py); '
                    'decode: the pipeline on 2-4 MP JPEG/WebP '
                    'originals, full vs reduced decode (--steps '
                    'rounds); '
                    'tag: jaxtag.tag end to end on CPU (448 px, 200 '
                    'JPEGs) against a plain onnxruntime loop, and its '
                    'JAX path (--steps rounds); '
                    'memory: the compiled train step\'s memory per '
                    'device from XLA (compiled, never run; '
                    'jaxtag/bench/memory.py).')
  flags.DEFINE_integer('steps', 20, 'Timed steps.')
  flags.DEFINE_integer('warmup', 3, 'Untimed steps after compiling.')
  flags.DEFINE_integer(
      'num_classes', None, 'Tags in the head (default: the dataset\'s tag list '
      'when --pipeline, 10,861 for --what=flops, else 1000).')
  flags.DEFINE_bool('pipeline', False,
                    'Also time the whole input pipeline + step '
                    '(builds the config\'s dataset if missing).')
  flags.DEFINE_list(
      'classes', None, '--what=mlgcn|addgcn: numbers of tags (default '
      '80,1000,10000 for mlgcn, 80,1000,5000 for addgcn).')
  flags.DEFINE_integer(
      'time_batch', None, '--what=mlgcn|addgcn: batch of the timed steps '
      '(default 4 for mlgcn, 1 for addgcn; mlgcn counts FLOPs at '
      'config.batch_size).')
  flags.DEFINE_integer(
      'flop_batch', 2, '--what=addgcn|flops: batch of the compiled steps whose '
      'FLOPs are counted.')
  flags.DEFINE_string(
      'bundle', None, '--what=serve: the bundle to serve (default: --config, '
      'else configs/default.py, with random weights and --num_classes tags).')
  flags.DEFINE_list(
      'concurrency', ['1', '8', '64'], '--what=serve: numbers of concurrent '
      'clients.')
  flags.DEFINE_integer(
      'requests', 256, '--what=serve: requests per number of clients (at '
      'least 4 per client).')
  flags.DEFINE_integer(
      'large_images', 30, '--what=serve: clients sending a 49-megapixel PNG '
      'at once for the memory figures (0: skip).')
  flags.DEFINE_list(
      'serve_args', [], '--what=serve: more flags for python -m jaxtag.serve, '
      'e.g. --serve_args=--max_batch=1,--decode_workers=4.')
  flags.DEFINE_list(
      'families', None, '--what=flops: backbone families (default: all of '
      'jaxtag/bench/flops.py FAMILIES).')
  flags.DEFINE_list('image_sizes', ['448'],
                    '--what=flops: square image sizes.')
  flags.DEFINE_list(
      'flops_from', ['lowered'], '--what=flops: cost analysis of the HLO as '
      'lowered (quick; the figures to quote) and/or as compiled for this '
      'backend: lowered, compiled or lowered,compiled.')
  flags.DEFINE_string('out', 'runs/bench/results.json',
                      'JSON file that the figures are appended to.')


def _append(path: str, record: dict) -> None:
  path = storage.as_path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  records = json.loads(path.read_text()) if path.exists() else []
  records.append(record)
  storage.write_json(path, records)


def _classes(default: str) -> list[int]:
  return [int(c) for c in (FLAGS.classes or default.split(','))]


def main(argv):
  del argv
  from jaxtag import distributed
  distributed.maybe_initialize()
  if FLAGS.what == 'decode':
    from jaxtag.bench import decode as decode_bench
    result = {'benchmark': 'decode', **decode_bench.run(rounds=FLAGS.steps)}
  elif FLAGS.what == 'tag':
    from jaxtag.bench import tag as tag_bench
    config = FLAGS.config
    if config is None:
      from jaxtag import config as config_lib
      config = config_lib.load_config_file('configs/default.py')
    result = {'benchmark': 'tag', **tag_bench.run(
        config, num_classes=FLAGS.num_classes or 1000, rounds=FLAGS.steps)}
  elif FLAGS.what == 'metrics':
    from jaxtag.bench import metrics as metrics_bench
    result = {'benchmark': 'metrics', **metrics_bench.run()}
  elif FLAGS.what == 'predict':
    if FLAGS.config is None:
      raise app.UsageError('--config is required for --what=predict.')
    from jaxtag.bench import predict as predict_bench
    result = {'benchmark': 'predict', **predict_bench.run(
        FLAGS.config, num_classes=FLAGS.num_classes or 1000,
        steps=FLAGS.steps, warmup=FLAGS.warmup)}
  elif FLAGS.what == 'serve':
    from jaxtag.bench import serve as serve_bench
    config = FLAGS.config
    if config is None and FLAGS.bundle is None:
      from jaxtag import config as config_lib
      config = config_lib.load_config_file('configs/default.py')
    result = {'benchmark': 'serve', **serve_bench.run(
        bundle=FLAGS.bundle, config=config,
        num_classes=FLAGS.num_classes or 1000,
        concurrency=[int(c) for c in FLAGS.concurrency],
        requests=FLAGS.requests, large_images=FLAGS.large_images,
        server_args=FLAGS.serve_args)}
  elif FLAGS.what == 'mlgcn':
    if FLAGS.config is None:
      raise app.UsageError('--config is required for --what=mlgcn.')
    from jaxtag.bench import mlgcn as mlgcn_bench
    config = FLAGS.config
    result = {'benchmark': 'mlgcn', 'backbone': config.model.backbone,
              'image_size': config.data.image_size,
              'device_kind': jax.devices()[0].device_kind,
              'head_share': mlgcn_bench.head_share(
                  config, num_classes=_classes('80,1000,10000'),
                  flop_batch=config.batch_size,
                  time_batch=FLAGS.time_batch or 4,
                  steps=FLAGS.steps,
                  head_kwargs={'tau': 0.4, 'gcn_dims': (1024,),
                               'embedding': 'learned'}),
              'products': mlgcn_bench.product_times(
                  (256, 1000, 2000, 4000), (0.001, 0.003, 0.01, 0.05),
                  width=512)}
  elif FLAGS.what == 'memory':
    if FLAGS.config is None:
      raise app.UsageError('--config is required for --what=memory.')
    from jaxtag.bench import memory as memory_bench
    result = {'benchmark': 'memory', **memory_bench.run(
        FLAGS.config, num_classes=FLAGS.num_classes or 1000)}
    memory_bench.print_result(result)
  elif FLAGS.what == 'flops':
    from jaxtag.bench import flops as flops_bench
    result = {'benchmark': 'flops', **flops_bench.run(
        families=FLAGS.families or list(flops_bench.FAMILIES),
        image_sizes=[int(s) for s in FLAGS.image_sizes],
        num_classes=FLAGS.num_classes or 10861, batch=FLAGS.flop_batch,
        flops_from=FLAGS.flops_from)}
    flops_bench.print_table(result)
  elif FLAGS.what == 'addgcn':
    if FLAGS.config is None:
      raise app.UsageError('--config is required for --what=addgcn.')
    from jaxtag.bench import addgcn as addgcn_bench
    config = FLAGS.config
    result = {'benchmark': 'addgcn', 'backbone': config.model.backbone,
              'image_size': config.data.image_size,
              'head_kwargs': dict(config.model.head_kwargs),
              'device_kind': jax.devices()[0].device_kind,
              'head_share': addgcn_bench.head_share(
                  config, num_classes=_classes('80,1000,5000'),
                  flop_batch=FLAGS.flop_batch,
                  time_batch=FLAGS.time_batch or 1,
                  steps=FLAGS.steps,
                  head_kwargs=dict(config.model.head_kwargs))}
  else:
    if FLAGS.config is None:
      raise app.UsageError('--config is required for --what=train.')
    from jaxtag.bench import train as train_bench
    num_classes = FLAGS.num_classes
    if num_classes is None and FLAGS.pipeline:
      from jaxtag.data import sources, tag_metadata
      _, builder = sources.open_split(FLAGS.config.dataset,
                                      FLAGS.config.dataset.train_split)
      num_classes = len(tag_metadata.load_tag_metadata(builder.data_dir).names)
    result = {'benchmark': 'train', **train_bench.run(
        FLAGS.config, num_classes=num_classes or 1000, steps=FLAGS.steps,
        warmup=FLAGS.warmup, with_pipeline=FLAGS.pipeline)}
  for key, value in result.items():
    print(f'{key:>32}: {value:.4g}' if isinstance(value, float)
          else f'{key:>32}: {value}')
  _append(FLAGS.out, result)
  print(f'appended to {FLAGS.out}')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
