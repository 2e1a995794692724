#!/usr/bin/env python
"""Train or evaluate a radkd-d2 model: the repository's name for ``python -m radkd_d2.train_net``
(also installed as ``radkd-train-net``).

    python tools/train_net.py --config-file configs/synthetic/pspnet_r18_tiny.yaml
    python tools/train_net.py --config-file CFG --num-gpus 2            # DDP (gloo on CPU)
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS model_final.pth
    python tools/train_net.py --config-file CFG --resume                # continue a run
"""
from radkd_d2.train_net import cli, main  # noqa: F401  (main: for callers that import it)

if __name__ == "__main__":
    cli()
