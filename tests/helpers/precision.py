"""What the mixed-precision tests share: the CPU autocast dtypes and the tolerance of
float32 maths under autocast."""
import torch

# Code that computes in float32 whatever autocast says differs from plain float32 by
# rounding only (a different kernel or summation order at most).
AUTOCAST_TOLERANCE = dict(rtol=1e-5, atol=1e-6)


def cpu_autocast_dtypes():
    """bfloat16, and float16 where this torch's CPU autocast has it."""
    dtypes = [torch.bfloat16]
    try:
        with torch.autocast('cpu', dtype=torch.float16):
            torch.ones(2, 2) @ torch.ones(2, 2)
        dtypes.append(torch.float16)
    except RuntimeError:
        pass
    return dtypes
