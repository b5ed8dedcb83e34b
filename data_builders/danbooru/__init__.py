"""danbooru: the gwern Danbooru20xx dumps (see README.md)."""
from data_builders.danbooru.danbooru import Danbooru  # noqa: F401
