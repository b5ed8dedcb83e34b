"""Importing this package registers the `animeface_character` TFDS builder."""
from data_builders.animeface_character.animeface_character import AnimefaceCharacter
from data_builders.animeface_character.animeface_character import AnimefaceCharacterConfig

__all__ = ['AnimefaceCharacter', 'AnimefaceCharacterConfig']
