from .setr_up_head import FastSETRUPHead, SyncFreeLossMixin, bilinear_upsample, top1_accuracy

__all__ = ['FastSETRUPHead', 'SyncFreeLossMixin', 'bilinear_upsample', 'top1_accuracy']
