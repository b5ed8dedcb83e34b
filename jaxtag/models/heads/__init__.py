"""Heads turn a backbone's feature map into per-tag logits.

The head API: a flax Module constructed with `num_classes`, `pool`, `dtype`
and its own fields (from `config.model.head_kwargs`), called as
`head(features [B,H,W,D], *, train, **extras) -> logits [B,C] float32`.
`extras` carries extra batch features (captions, semantic vectors) by name.
A head that needs the dataset's tag statistics (the label graph of ML-GCN or
ADD-GCN) declares a `tag_metadata` field; `build_head` fills it.
"""
from jaxtag.models.heads.linear import LinearHead

HEADS = {
    'linear': LinearHead,
}
