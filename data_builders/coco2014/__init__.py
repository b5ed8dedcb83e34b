"""Importing this package registers the `coco2014` TFDS builder."""
from data_builders.coco2014.coco2014 import Coco2014
from data_builders.coco2014.coco2014 import Coco2014Config

__all__ = ['Coco2014', 'Coco2014Config']
