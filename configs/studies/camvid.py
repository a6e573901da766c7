# The CamVid study (docs/results/camvid.md): CamVid, 11 classes, under a frozen DINOv2
# ViT-S/14 with a SETR-PUP head, 300 iterations of 8 crops of 224 (CPU-sized). Every
# variant is a config of configs/camvid/ plus the options below; the ablations change one
# switch of the paper's DA-VPT (`davpt`). Run, list and report with
#   python tools/study.py camvid {run,list,report} ...
# (the fields are described in harness/study/spec.py).
_base_ = ['./_davpt_plus_contrasts.py']  # the contrasts block's questions
dataset = 'CamVid'
title = 'Real-data study: CamVid + a frozen DINOv2 ViT-S/14'
config_dir = 'configs/camvid'
results_dir = 'docs/results/camvid'
report = 'docs/results/camvid.md'
work_root = 'work_dirs/study/camvid'
data_root = 'data/camvid'
pretrained = 'pretrain/dinov2_vits14.safetensors'
reference = 'davpt'  # the paper's DA-VPT: ablations change one switch of it
baseline = 'vpt-deep'
heads_only = 'linear'


def _config(mode):
    return f'setr_pup_dinov2-s14_{mode}_camvid.py'


_no_guidance = dict(
    backbone=dict(guided_blocks=(), num_guided_prompts=None, num_extra_prompts=None),
    loss_prompt_token=None,
    loss_prompt_cls=None)
variants = [
    # ------------------------------------------------------------------ tuning modes
    dict(name='linear', config=_config('linear'), group='main',
         description='heads only (frozen trunk)'),
    dict(name='bias', config=_config('bias'), group='main',
         description='BitFit: every trunk bias'),
    dict(name='vpt-deep', config=_config('vpt-deep'), group='main',
         description='VPT-Deep, 10 prompts per block'),
    dict(name='davpt', config=_config('davpt'), group='main',
         description="DA-VPT, the paper's settings"),
    dict(name='davpt-plus', config=_config('davpt-plus'), group='main',
         description="DA-VPT+, the paper's settings"),
    # DA-VPT+ also tunes key/value biases: without this control its difference from VPT-Deep
    # could not be told apart from the biases' own (added with the CCP study).
    dict(name='vpt-deep-kv', config=_config('vpt-deep-kv'), group='main',
         description="VPT-Deep + key/value bias offsets, no guidance (DA-VPT+'s control)"),
    dict(name='full', config=_config('full'), group='main',
         description='full fine-tuning (trunk lr x0.1)'),
    # ------------------------------------------ ablations: one switch of the paper's DA-VPT
    dict(name='pa-authors', config=_config('davpt'), group='Proxy-Anchor scale',
         description="authors' release: alpha 160, delta 0.02, positive term over all "
         'proxies',
         options=dict(model=dict(
             loss_prompt_token=dict(alpha=160., margin=0.02, positive_average='all_proxies'),
             loss_prompt_cls=dict(alpha=160., margin=0.02, positive_average='all_proxies')))),
    dict(name='pairing-key-query', config=_config('davpt'), group='embedding pairing',
         description="prompt key vs patch/CLS query (the attention's own space)",
         options=dict(model=dict(embedding_pairing='key-query'))),
    dict(name='pairing-input', config=_config('davpt'), group='embedding pairing',
         description="authors' release: raw prompt vs image-mean of the block input",
         options=dict(model=dict(embedding_pairing='input', token_pooling='image'))),
    dict(name='guided-last', config=_config('davpt'), group='guided block',
         description='the last block (11) guided (paper figure 4a)',
         options=dict(model=dict(backbone=dict(guided_blocks=(11, ))))),
    dict(name='guided-middle', config=_config('davpt'), group='guided block',
         description="block 5 guided (the authors' block 11 of 24, scaled to 12 blocks)",
         options=dict(model=dict(backbone=dict(guided_blocks=(5, ))))),
    dict(name='kmeans-cls', config=_config('davpt'), group='k-means input',
         description='k-means over CLS tokens (paper, authors)',
         options=dict(model=dict(class_representation='cls'))),
    dict(name='sgd-authors', config=_config('davpt-sgd'), group='optimiser',
         description="authors' recipe: SGD m 0.9, lr 1e-3, wd 0, poly 0.9, head lr x10"),
    dict(name='vpt-deep-sgd', config=_config('davpt-sgd'), group='optimiser',
         description="VPT-Deep under the authors' SGD recipe (its baseline)",
         options=dict(model=_no_guidance, custom_hooks=[])),
    dict(name='detach-data', config=_config('davpt'), group='metric gradient',
         description='patch/CLS embeddings detached: the losses move the guided prompts only',
         options=dict(model=dict(detach_data=True))),
    dict(name='davpt-plus-detach', config=_config('davpt-plus'), group='metric gradient',
         description='DA-VPT+ with the patch/CLS embeddings detached',
         options=dict(model=dict(detach_data=True))),
    dict(name='no-cls-loss', config=_config('davpt'), group='loss weights',
         description='gamma = 0: no CLS loss',
         options=dict(model=dict(loss_prompt_cls=None))),
    dict(name='no-token-loss', config=_config('davpt'), group='loss weights',
         description='beta = 0: no token loss',
         options=dict(model=dict(loss_prompt_token=None))),
    dict(name='weights-0.01', config=_config('davpt'), group='loss weights',
         description='beta = gamma = 0.01',
         options=dict(model=dict(loss_prompt_token=dict(loss_weight=0.01),
                                 loss_prompt_cls=dict(loss_weight=0.01)))),
    # Beyond the paper, shared with the CCP study (configs/studies/ccp.py says why).
    dict(name='route', config=_config('davpt'), group='beyond the paper',
         description='routing: prompt key vs patch/CLS query, data side detached',
         options=dict(model=dict(embedding_pairing='key-query', detach_data=True))),
]
schedules = [
    dict(name='300', description='300 iterations, the configs as written'),
    # Runs of the longer schedule that confirm the main comparison.
    dict(name='confirm600', dir='confirm600', iters=600, block='confirmation',
         description='600 iterations'),
]
main_schedule = '300'
curve_variants = ['linear', 'vpt-deep', 'davpt', 'davpt-plus', 'detach-data',
                  'pairing-key-query']
blocks = ['main', 'contrasts', 'ablation', 'training', 'confirmation', 'per-class', 'plots',
          'runs']
# Variants the study recommends ("Final configs"), also written out as config files so
# that they rerun on other data without the runner.
final_configs = {
    'detach-data': 'configs/camvid/setr_pup_dinov2-s14_davpt-detach_camvid.py',
    'davpt-plus-detach': 'configs/camvid/setr_pup_dinov2-s14_davpt-plus-detach_camvid.py',
}
