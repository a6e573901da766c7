from .camvid import CAMVID_CLASSES, CAMVID_PALETTE, CamVidDataset
from .ccp import CCP_CLASSES, CCP_PALETTE, ClothingCoParsingDataset
from .checks import (DATA_CHECK_MODES, DatasetError, check_data_cfg, check_dataset,
                     check_sample)
from .collate import compact_label_collate

__all__ = ['DatasetError', 'check_data_cfg', 'check_dataset', 'check_sample',
           'DATA_CHECK_MODES', 'CamVidDataset', 'CAMVID_CLASSES', 'CAMVID_PALETTE',
           'ClothingCoParsingDataset', 'CCP_CLASSES', 'CCP_PALETTE', 'compact_label_collate']
