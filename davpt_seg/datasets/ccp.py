"""Clothing Co-Parsing (Yang et al., CVPR 2014): 59 classes, class 0 (``null``) background.

mmseg ships no CCP dataset. The layout is mmseg's usual one, written by
``tools/dataset_converters/ccp.py`` from the original release (``photos/*.jpg``,
``annotations/pixel-level/*.mat``, ``label_list.mat``)::

    data/ccp/img_dir/{train,val,test}/*.jpg   RGB photos
    data/ccp/ann_dir/{train,val,test}/*.png   uint8 class index per pixel, 0..58

Class 0 is the background (about 77 % of the pixels): it is predicted and scored like any
other class, as PASCAL Context-60's class 0 is, but DA-VPT never assigns it to a guided
prompt (``background_classes=(0, )`` in the configs). Many classes are small accessories
(rings, bracelets, earrings), a long tail like ADE20K's.
"""
from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

CCP_CLASSES = (
    'null', 'accessories', 'bag', 'belt', 'blazer', 'blouse', 'bodysuit', 'boots', 'bra',
    'bracelet', 'cape', 'cardigan', 'clogs', 'coat', 'dress', 'earrings', 'flats', 'glasses',
    'gloves', 'hair', 'hat', 'heels', 'hoodie', 'intimate', 'jacket', 'jeans', 'jumper',
    'leggings', 'loafers', 'necklace', 'panties', 'pants', 'pumps', 'purse', 'ring', 'romper',
    'sandals', 'scarf', 'shirt', 'shoes', 'shorts', 'skin', 'skirt', 'sneakers', 'socks',
    'stockings', 'suit', 'sunglasses', 'sweater', 'sweatshirt', 'swimwear', 't-shirt', 'tie',
    'tights', 'top', 'vest', 'wallet', 'watch', 'wedges')


def _palette(count: int):
    """Distinct colours by bit interleaving (the PASCAL VOC scheme): 0 is black."""
    palette = []
    for index in range(count):
        red = green = blue = 0
        value = index
        for shift in range(7, -1, -1):
            red |= (value & 1) << shift
            green |= ((value >> 1) & 1) << shift
            blue |= ((value >> 2) & 1) << shift
            value >>= 3
        palette.append([red, green, blue])
    return palette


CCP_PALETTE = _palette(len(CCP_CLASSES))


@DATASETS.register_module()
class ClothingCoParsingDataset(BaseSegDataset):
    """Clothing Co-Parsing, 59 classes including the background class 0 (scored)."""
    METAINFO = dict(classes=CCP_CLASSES, palette=CCP_PALETTE)

    def __init__(self, img_suffix: str = '.jpg', seg_map_suffix: str = '.png',
                 reduce_zero_label: bool = False, **kwargs):
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix,
                         reduce_zero_label=reduce_zero_label, **kwargs)
