"""Importing this package registers the `voc2007` TFDS builder."""
from data_builders.voc2007.voc2007 import Voc2007
from data_builders.voc2007.voc2007 import Voc2007Config

__all__ = ['Voc2007', 'Voc2007Config']
