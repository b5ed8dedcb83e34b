"""Importing this package registers the `flickr8k` TFDS builder."""
from data_builders.flickr8k.flickr8k import Flickr8k
from data_builders.flickr8k.flickr8k import Flickr8kConfig

__all__ = ['Flickr8k', 'Flickr8kConfig']
