"""Importing this package registers the `image_folder` TFDS builder."""
from data_builders.image_folder.image_folder import ImageFolder
from data_builders.image_folder.image_folder import ImageFolderConfig

__all__ = ['ImageFolder', 'ImageFolderConfig']
