from setuptools import find_packages, setup

setup(
    name='davpt-seg',
    version='0.2.0',
    description='DA-VPT (Distribution-Aware Visual Prompt Tuning) for semantic '
    'segmentation with MMSegmentation 1.x',
    packages=find_packages(include=['davpt_seg', 'davpt_seg.*']),
    python_requires='>=3.9',
    install_requires=[
        'torch>=2.1',
        'torchvision>=0.16',
        # 1.0.23 is the first timm whose VisionTransformer takes attn_layer (our
        # GuidedAttention goes in through it); tested up to 1.0.31.
        'timm>=1.0.23,<1.1',
        'mmengine>=0.10.4,<1.0',
        # mmcv (>=2.0.0rc4,<2.2.0: mmseg 1.2.2 asserts the range at import time) is not
        # listed: either of its two distributions provides the package, mmcv-lite (no
        # compiled ops, enough for every config here: davpt_seg/mmcv_lite.py) or mmcv, and
        # pip cannot say "either". tools/misc/setup_mmcv.sh installs the one asked for; a
        # listed `mmcv` would make pip compile it from source beside mmcv-lite.
        'mmsegmentation>=1.2.2,<1.3',
        'scikit-learn>=1.3',
        # mmseg's tokenizer imports these without declaring them.
        'ftfy',
        'regex',
        # mmengine and mmcv import pkg_resources at run time; setuptools 82 removed it.
        'setuptools<82',
    ],
    extras_require={
        'test': ['pytest>=7', 'pytorch-metric-learning>=2.3', 'ruff>=0.6'],
        # tools/deployment/export_onnx.py and `tools/deployment/infer.py --backend
        # onnxruntime`. torch >= 2.9 exports through torch.export, whose ONNX translation is
        # onnxscript's (0.x: its API moves between minor versions). Tested: onnx 1.23.2,
        # onnxruntime 1.32.0, onnxscript 0.7.2 with torch 2.14.1 on Python 3.11.
        'onnx': ['onnx>=1.23.2,<2', 'onnxruntime>=1.32,<2', 'onnxscript>=0.7.2,<0.8'],
    },
)
