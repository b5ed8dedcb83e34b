"""pixiv_characters: Vallet & Sakamoto's character collection (README.md)."""
from data_builders.pixiv_characters.pixiv_characters import PixivCharacters  # noqa: F401
