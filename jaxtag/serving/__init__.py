"""Serving: inference bundles, StableHLO export and the Tagger library.

  bundle = jaxtag.serving.load_bundle('BUNDLE')     # model, variables, tags
  jaxtag.serving.Tagger('BUNDLE').tag(['a.png'])    # -> list of dicts

See jaxtag/serving/convert.py for how a run becomes a bundle.
"""
from jaxtag.serving.bundle import Bundle
from jaxtag.serving.bundle import load_bundle
from jaxtag.serving.stablehlo import load_stablehlo
from jaxtag.serving.tagger import Tagger
