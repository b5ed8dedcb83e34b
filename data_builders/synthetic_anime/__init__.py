"""Importing this package registers the `synthetic_anime` TFDS builder."""
from data_builders.synthetic_anime.synthetic_anime import SyntheticAnime
from data_builders.synthetic_anime.synthetic_anime import SyntheticAnimeConfig

__all__ = ['SyntheticAnime', 'SyntheticAnimeConfig']
