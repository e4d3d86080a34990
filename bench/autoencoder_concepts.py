"""Does the autoencoder keep what the denoiser must learn? The evaluation judges' concept accuracy on
held-out oracle-labelled renders, as rendered and after an encode-decode round trip through a model's
autoencoder. If shapes survive the round trip, a model that does not draw them has a denoiser problem.

    .venv/bin/python bench/autoencoder_concepts.py --model URI --judges URI [--preset demo] [-n 600]

Prints one line per kind of image; the reading is recorded in bench/results/concept_accuracy.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from photogenic.config import load_config
from photogenic.judges import CONCEPTS, judge_world, load_judge
from photogenic.models.io import load_model_dir
from photogenic.world import labelled_renders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an exported autoencoder or full model (its vae/ is used)")
    parser.add_argument("--judges", required=True, help="the evaluation judge set")
    parser.add_argument("--preset", default="demo")
    parser.add_argument("-n", type=int, default=600, help="held-out renders")
    args = parser.parse_args()
    config = load_config(args.preset)
    judge = load_judge(args.judges, config)
    from diffusers import AutoencoderKL

    local = load_model_dir(args.model, Path(config.workspace, "cache", "models").resolve())
    vae = AutoencoderKL.from_pretrained(local / "vae").eval()
    images, labels = labelled_renders(judge_world(config, "evaluation", holdout=True), 0, args.n)
    x = torch.from_numpy(images).float().div(127.5).sub(1.0)
    with torch.no_grad():
        recon = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
    round_trip = (recon.add(1).mul(127.5).round().to(torch.uint8)).numpy()
    print(f"reconstruction MSE in [-1, 1]: {float((recon - x).pow(2).mean()):.4f}")
    for name, batch in (("rendered", images), ("round trip", round_trip)):
        scores = judge.score(batch)
        acc = {k: float(np.mean(scores[k].argmax(-1) == labels[k])) for k in CONCEPTS}
        print(f"{name:>10}: " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()))


if __name__ == "__main__":
    main()
