# The one-GPU recipe of configs/setr_pup_davpt_pascal_context.py (60 classes): the paper's
# 16 images per iteration (8 GPUs x 2 there) on one GPU, with its lr, schedule (80k
# iterations) and global batch. docs/training.md ("One GPU") says what equals 8x2 and what
# does not.
# Train: tools/train.py configs/one_gpu/setr_pup_davpt_pascal_context_1xb16.py
_base_ = ['../setr_pup_davpt_pascal_context.py']
train_dataloader = dict(batch_size=16, num_workers=8, persistent_workers=True,
                        pin_memory=True)
# bf16 autocast without loss scaling (what tools/train.py --amp sets on a GPU with bf16).
optim_wrapper = dict(type='AmpOptimWrapper', dtype='bfloat16', loss_scale=dict(enabled=False))
# torch.compile of the transformer blocks and the heads; the first iterations compile.
model = dict(compile_regions=True)
# The losses reach mmengine's log without the host waiting for every step: the logs, and the
# message hub in checkpoints, are what RuntimeInfoHook gives (docs/training.md, "One GPU").
default_hooks = dict(runtime_info=dict(type='AsyncRuntimeInfoHook'))
