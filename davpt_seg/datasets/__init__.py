from .synthetic import ade_class_names, make_ade_like_dataset

__all__ = ['make_ade_like_dataset', 'ade_class_names']
