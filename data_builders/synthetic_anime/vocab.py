"""The tag vocabulary, the characters and the archetypes of synthetic_anime.

Tags follow Danbooru's categories: 0 general, 4 character, 9 rating. Tag ids
are row numbers of selected_tags.csv, in the order of `TAGS`.
"""
from __future__ import annotations

from jaxtag.data import tag_metadata

GENERAL, CHARACTER, RATING = (tag_metadata.GENERAL, tag_metadata.CHARACTER,
                              tag_metadata.RATING)

HAIR_COLORS = {  # tag -> RGB
    'blonde_hair': (246, 214, 110), 'brown_hair': (130, 84, 50),
    'black_hair': (35, 35, 45), 'blue_hair': (70, 110, 230),
    'red_hair': (210, 50, 50), 'pink_hair': (250, 150, 200),
    'purple_hair': (140, 80, 190), 'green_hair': (70, 170, 90),
    'white_hair': (240, 240, 245), 'silver_hair': (175, 180, 195),
}
EYE_COLORS = {
    'blue_eyes': (40, 90, 230), 'red_eyes': (220, 30, 40),
    'green_eyes': (30, 170, 60), 'purple_eyes': (150, 60, 200),
    'yellow_eyes': (240, 200, 30), 'brown_eyes': (120, 70, 30),
}
HAIR_LENGTHS = ('long_hair', 'short_hair')
HAIR_STYLES = ('twintails', 'ponytail')        # both need long hair
ACCESSORIES = ('cat_ears', 'glasses', 'hat', 'hair_ribbon', 'headphones',
               'halo', 'hairband')
OUTFITS = ('school_uniform', 'serafuku', 'maid', 'maid_headdress', 'apron',
           'swimsuit', 'kimono', 'dress', 'hoodie')
DETAILS = ('tail', 'bag', 'fang', 'blush', 'mole', 'smile', 'open_mouth')
BACKGROUNDS = ('simple_background', 'white_background', 'sky', 'night',
               'indoors', 'outdoors')
COUNTS = ('1girl', '2girls', '3girls', 'multiple_girls', '1boy',
          'multiple_boys', 'solo')

# Named characters: a fixed look each. Every single attribute is shared with
# another character, so only the combination identifies one.
CHARACTERS = {
    # name: (gender, hair colour, length, style, eyes, signature tags)
    'aoi_(synthetic)': ('girl', 'blue_hair', 'long_hair', 'twintails',
                        'red_eyes', ('hair_ribbon',)),
    'akane_(synthetic)': ('girl', 'red_hair', 'long_hair', 'twintails',
                          'blue_eyes', ('hair_ribbon',)),
    'midori_(synthetic)': ('girl', 'green_hair', 'long_hair', 'ponytail',
                           'red_eyes', ('headphones',)),
    'yuki_(synthetic)': ('girl', 'white_hair', 'long_hair', None,
                         'red_eyes', ('halo',)),
    'shiro_(synthetic)': ('girl', 'white_hair', 'short_hair', None,
                          'blue_eyes', ('cat_ears', 'tail')),
    'kuro_(synthetic)': ('girl', 'black_hair', 'short_hair', None,
                         'yellow_eyes', ('cat_ears', 'tail')),
    'momo_(synthetic)': ('girl', 'pink_hair', 'long_hair', 'twintails',
                         'green_eyes', ('maid', 'maid_headdress', 'apron')),
    'sumire_(synthetic)': ('girl', 'purple_hair', 'long_hair', None,
                           'purple_eyes', ('kimono',)),
    'kin_(synthetic)': ('girl', 'blonde_hair', 'long_hair', 'ponytail',
                        'blue_eyes', ('school_uniform', 'serafuku')),
    'hana_(synthetic)': ('girl', 'purple_hair', 'short_hair', None,
                         'purple_eyes', ('glasses',)),
    'rin_(synthetic)': ('girl', 'black_hair', 'long_hair', 'ponytail',
                        'purple_eyes', ('kimono',)),
    'sora_(synthetic)': ('girl', 'blue_hair', 'short_hair', None,
                         'green_eyes', ('headphones',)),
    'ginko_(synthetic)': ('girl', 'silver_hair', 'long_hair', None,
                          'yellow_eyes', ('hat',)),
    'mirai_(synthetic)': ('girl', 'blonde_hair', 'long_hair', 'twintails',
                          'green_eyes', ('maid', 'maid_headdress', 'apron')),
    'nagi_(synthetic)': ('girl', 'silver_hair', 'short_hair', None,
                         'blue_eyes', ('glasses',)),
    'ren_(synthetic)': ('boy', 'black_hair', 'short_hair', None,
                        'red_eyes', ('school_uniform',)),
    'kaito_(synthetic)': ('boy', 'blue_hair', 'short_hair', None,
                          'yellow_eyes', ('hat',)),
    'haru_(synthetic)': ('boy', 'brown_hair', 'short_hair', None,
                         'green_eyes', ('hoodie', 'headphones')),
    'tsubasa_(synthetic)': ('boy', 'red_hair', 'short_hair', None,
                            'brown_eyes', ('hoodie',)),
    'wakaba_(synthetic)': ('girl', 'green_hair', 'short_hair', None,
                           'brown_eyes', ('hat',)),
    'yuzu_(synthetic)': ('girl', 'pink_hair', 'short_hair', None,
                         'brown_eyes', ('halo',)),
    'kou_(synthetic)': ('boy', 'brown_hair', 'short_hair', None,
                        'blue_eyes', ('school_uniform',)),
}

# Archetypes of generic figures: (weight, {tag: probability}). They make the
# co-occurrence asymmetric: a maid nearly always wears an apron, but aprons
# are rarer than maids only among maids.
GIRL_ARCHETYPES = {
    'plain': (0.30, {}),
    'maid': (0.14, {'maid': 1.0, 'maid_headdress': 0.9, 'apron': 0.95,
                    'blush': 0.3}),
    'catgirl': (0.12, {'cat_ears': 1.0, 'tail': 0.8, 'fang': 0.6,
                       'smile': 0.5}),
    'student': (0.16, {'school_uniform': 1.0, 'serafuku': 0.8, 'bag': 0.6}),
    'beach': (0.08, {'swimsuit': 1.0, 'blush': 0.4, 'smile': 0.5}),
    'shrine': (0.08, {'kimono': 1.0, 'hair_ribbon': 0.5}),
    'angel': (0.06, {'halo': 1.0, 'dress': 0.7}),
    'gamer': (0.06, {'headphones': 1.0, 'hoodie': 0.7, 'glasses': 0.4}),
}
BOY_ARCHETYPES = {
    'plain': (0.5, {}),
    'student': (0.3, {'school_uniform': 1.0, 'bag': 0.5}),
    'gamer': (0.2, {'headphones': 1.0, 'hoodie': 0.8}),
}
# Independent extras for any figure (probability each).
EXTRAS = {'glasses': 0.08, 'hat': 0.06, 'hair_ribbon': 0.08, 'hairband': 0.08,
          'blush': 0.15, 'mole': 0.1, 'smile': 0.3, 'open_mouth': 0.2}
GIRL_ONLY = {'cat_ears', 'tail', 'fang', 'maid', 'maid_headdress', 'apron',
             'swimsuit', 'serafuku', 'dress', 'hair_ribbon', 'hairband',
             'twintails', 'ponytail'}
# One outfit per figure: the first of these groups that is present wins.
OUTFIT_GROUPS = (('maid', 'maid_headdress', 'apron'), ('swimsuit',),
                 ('kimono',), ('school_uniform', 'serafuku'), ('dress',),
                 ('hoodie',))
SENSITIVE_OUTFITS = {'swimsuit'}

GENERAL_TAGS = (COUNTS + tuple(HAIR_COLORS) + HAIR_LENGTHS + HAIR_STYLES
                + tuple(EYE_COLORS) + ACCESSORIES + OUTFITS + DETAILS
                + BACKGROUNDS)
RATING_TAGS = ('rating:general', 'rating:sensitive')
TAGS = GENERAL_TAGS + tuple(CHARACTERS) + RATING_TAGS
CATEGORIES = ((GENERAL,) * len(GENERAL_TAGS) + (CHARACTER,) * len(CHARACTERS)
              + (RATING,) * len(RATING_TAGS))
TAG_ID = {name: i for i, name in enumerate(TAGS)}
