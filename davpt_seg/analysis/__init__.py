from .guidance_gradients import GradientShare, guidance_gradient_shares

__all__ = ['GradientShare', 'guidance_gradient_shares']
