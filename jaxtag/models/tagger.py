"""A tagger is a backbone and a head, each chosen by name."""
from typing import Any

import flax.linen as nn


class Tagger(nn.Module):
  backbone: nn.Module
  head: nn.Module

  def __call__(self, image, *, train: bool, **extras) -> Any:
    features = self.backbone(image, train=train)
    return self.head(features, train=train, **extras)
