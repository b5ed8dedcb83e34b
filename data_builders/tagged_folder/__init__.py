"""tagged_folder: images beside same-name .txt captions (see README.md)."""
from data_builders.tagged_folder.tagged_folder import TaggedFolder  # noqa: F401
