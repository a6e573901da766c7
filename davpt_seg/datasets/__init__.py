from .camvid import CAMVID_CLASSES, CAMVID_PALETTE, CamVidDataset
from .checks import (DATA_CHECK_MODES, DatasetError, check_data_cfg, check_dataset,
                     check_sample)
from .synthetic import ade_class_names, make_ade_like_dataset

__all__ = ['make_ade_like_dataset', 'ade_class_names', 'DatasetError', 'check_data_cfg',
           'check_dataset', 'check_sample', 'DATA_CHECK_MODES', 'CamVidDataset',
           'CAMVID_CLASSES', 'CAMVID_PALETTE']
