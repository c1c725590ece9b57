"""Pick the input size: linear-probe accuracy and backbone cost per image at several sizes.

Centralized, no federation. A seeded sample of Fashion-MNIST training images goes through
the frozen EfficientNet-Lite0 at each size. A linear head trains on the pooled features
(Adam, 30 epochs), and its accuracy is measured on a seeded sample of the test split.

    python -m fedgraft.simulations.benchmark_image_size --sizes 32,64,96 --train 3000 --test 1000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedgraft.data.fashion_mnist import load_fashion_mnist
from fedgraft.models.preprocess import preprocess_images
from fedgraft.models.registry import create_backbone


def pooled_features(backbone, images: np.ndarray, size: int, batch_size: int = 250) -> torch.Tensor:
    chunks = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = preprocess_images(images[start:start + batch_size], size, backbone.input_mean, backbone.input_std)
            chunks.append(backbone(batch))
    return torch.cat(chunks)


def linear_probe(train_x, train_y, test_x, test_y, epochs: int, seed: int) -> float:
    torch.manual_seed(seed)
    head = torch.nn.Linear(train_x.shape[1], 10)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
    labels = torch.from_numpy(train_y).long()
    for _ in range(epochs):
        order = torch.randperm(len(train_x))
        for start in range(0, len(train_x), 64):
            batch = order[start:start + 64]
            loss = F.cross_entropy(head(train_x[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return float((head(test_x).argmax(1).numpy() == test_y).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="32,64,96", help="comma-separated input sides in pixels")
    parser.add_argument("--train", type=int, default=3000, help="training images for the probe")
    parser.add_argument("--test", type=int, default=1000, help="test images for the probe")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("simulations/results/image_size.json"))
    args = parser.parse_args()

    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    rng = np.random.default_rng(args.seed)
    train_index = rng.permutation(len(train))[:args.train]
    test_index = rng.permutation(len(test))[:args.test]
    backbone = create_backbone("efficientnet_lite0", "imagenet").eval()

    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        started = time.perf_counter()
        train_x = pooled_features(backbone, train.images[train_index], size)
        test_x = pooled_features(backbone, test.images[test_index], size)
        ms_per_image = (time.perf_counter() - started) * 1000 / (args.train + args.test)
        accuracy = linear_probe(train_x, train.labels[train_index], test_x, test.labels[test_index], args.epochs, args.seed)
        results.append({"image_size": size, "probe_accuracy": accuracy, "ms_per_image": ms_per_image})
        print(f"{size:>4} px: probe accuracy {accuracy:.4f}, {ms_per_image:.1f} ms per image", flush=True)

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"args": vars(args) | {"output": str(args.output)}, "results": results}, indent=2))


if __name__ == "__main__":
    main()
