"""Heads turn a backbone's feature map into a method's outputs.

The head API, for a flax Module chosen by `config.model.head`:
- Constructed with `num_classes`, `pool`, `dtype` and its own fields (from
  `config.model.head_kwargs`, checked by name). A head that needs the
  dataset's tag statistics (a label graph) declares a `tag_metadata` field.
- `head(features [B,H,W,D], *, train, feature_mask, **batch_features)`
  returns the outputs the objective (jaxtag.objectives, `config.loss.name`)
  reads: logits [B, C] float32, or a dict of named arrays.
  `feature_mask` is None, or [B,H,W] with 1 on real cells (native-size
  evaluation pads images inside their shape bucket).
- Class attributes declare which batch keys the head receives; nothing
  else reaches it. `batch_features`: fed in training and prediction (for
  example 'semantic', which a feature provider of config.model.features
  may compute: jaxtag/models/features.py). `teacher_features`: fed only to
  the training pass (for example 'label_sequence'), never to prediction.
- An optional `predict(features, *, feature_mask, **batch_features)` is the
  prediction path when it differs from training (beam search, a fully
  convolutional test network).
- An optional `predict_image(backbone, image, *, image_mask,
  **batch_features)` takes the whole prediction path, backbone included,
  for a head judged on something else than the whole image: the 10-crop
  baseline of heads/vallet.py runs the backbone on random crops (from a
  fixed key: every evaluation sees the same crops) and averages.
- Constants that are not trained (a label graph, a label order) live in the
  'constants' collection: `self.variable('constants', name, init_fn)`.
  They are saved and restored with the state and reach the compiled step
  as arguments, not literals.
- A head that holds label graphs names them in a class attribute
  `label_graphs: ClassVar[tuple[str, ...]]`: each is one of its constants,
  a dense [C, C] array or a sparse pair `<name>_values` [E] and
  `<name>_indices` [E, 2]. The run's plots draw them (jaxtag/plots.py);
  nothing is found by guessing from names.
"""
from jaxtag.models.heads.addgcn import ADDGCNHead
from jaxtag.models.captioner import ShowAttendTell
from jaxtag.models.heads.linear import LinearHead
from jaxtag.models.heads.lstm_decoder import LSTMDecoder
from jaxtag.models.heads.mlgcn import MLGCNHead
from jaxtag.models.heads.vallet import ValletHead

HEADS = {
    'addgcn': ADDGCNHead,
    'linear': LinearHead,
    'lstm_decoder': LSTMDecoder,
    'mlgcn': MLGCNHead,
    'show_attend_tell': ShowAttendTell,
    'vallet': ValletHead,
}
