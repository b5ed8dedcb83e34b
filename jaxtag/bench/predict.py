"""Cost of the prediction path alone: FLOPs and time per image.

The jitted `Tagger.predict` on a batch of `config.eval.batch_size` square
images of `config.data.image_size` (preprocessed, on device): what one
method pays to score an image, without the eval loss that the eval step
adds. Compare prediction paths by running it once per config, e.g. with
`--config.model.head_kwargs.prediction=crops`.
"""
from __future__ import annotations

import time
from typing import Any

import jax

from jaxtag import models
from jaxtag.bench import train as train_bench


def run(config, *, num_classes: int, steps: int, warmup: int) -> dict[str, Any]:
  model = models.build_model(config.model, num_classes)
  batch, size = int(config.eval.batch_size), int(config.data.image_size)
  image = jax.random.normal(jax.random.key(0), (batch, size, size, 3),
                            models.DTYPES[config.model.dtype])
  variables = jax.jit(lambda x: model.init(jax.random.key(1), x[:1],
                                           train=False))(image)
  predict = jax.jit(lambda v, x: model.apply(v, x, method='predict'))
  compiled = predict.lower(variables, image).compile()
  flops = train_bench._flops_per_step(compiled)  # pylint: disable=protected-access
  for _ in range(warmup + 1):
    jax.block_until_ready(compiled(variables, image))
  start = time.perf_counter()
  for _ in range(steps):
    out = compiled(variables, image)
  jax.block_until_ready(out)
  seconds = (time.perf_counter() - start) / steps
  return {
      'backbone': config.model.backbone, 'head': config.model.head,
      'head_kwargs': dict(config.model.head_kwargs),
      'image_size': size, 'batch_size': batch,
      'gflop_per_image': None if flops is None else flops / batch / 1e9,
      'ms_per_image': 1e3 * seconds / batch,
      'device': jax.devices()[0].device_kind,
  }
