"""Transfer model: a backbone whose first blocks are frozen, followed by a trainable head.

The backbone's chain is cut at `split`. Blocks before it are frozen. Their parameters
have requires_grad off, `train()` keeps them in eval mode and `frozen_features` runs
them without autograd, so training leaves their weights and BatchNorm running
statistics bit for bit unchanged. Their output depends only on the input, which lets a
feature cache store it. Blocks from `split` on and the head train.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum

import torch
from torch import Tensor, nn

from .registry import Backbone

__all__ = ["TrainingMode", "TransferModel"]

_BLOCKS_PREFIX = "backbone.blocks."
_HEAD_PREFIX = "head."


class TrainingMode(str, Enum):
    """Training mode: the part of the transfer model that trains."""

    FEATURE_EXTRACTION = "feature-extraction"  # backbone frozen, only the head trains
    FINE_TUNE = "fine-tune"  # the last N blocks of the chain and the head train
    FULL = "full"  # everything trains


def _parse_training_mode(mode: TrainingMode | str) -> TrainingMode:
    try:
        return TrainingMode(mode)
    except ValueError:
        choices = ", ".join(member.value for member in TrainingMode)
        raise ValueError(f"unknown training mode {mode!r}: expected one of {choices}") from None


class TransferModel(nn.Module):
    """Backbone plus classification head, trained in one of three TrainingModes.

    Parameters
    ----------
    backbone : Backbone
        Feature extractor; the model sets requires_grad=False on its frozen blocks.
    head : nn.Module
        Maps (N, backbone.num_features) to (N, num_classes) logits.
    mode : TrainingMode or str
        "feature-extraction", "fine-tune" or "full".
    trainable_blocks : int
        Number of trailing backbone blocks that train in fine-tune mode, from 1 to
        len(backbone.blocks). Other modes ignore it.
    """

    def __init__(
        self,
        backbone: Backbone,
        head: nn.Module,
        mode: TrainingMode | str,
        trainable_blocks: int = 1,
    ) -> None:
        super().__init__()
        mode = _parse_training_mode(mode)
        num_blocks = len(backbone.blocks)
        if mode is TrainingMode.FINE_TUNE and not 1 <= trainable_blocks <= num_blocks:
            raise ValueError(
                f"trainable_blocks must be between 1 and {num_blocks} for backbone "
                f"{backbone.name}, which has {num_blocks} blocks, got {trainable_blocks}"
            )

        self.backbone = backbone
        self.head = head
        self.mode = mode
        if mode is TrainingMode.FEATURE_EXTRACTION:
            self.split = num_blocks
        elif mode is TrainingMode.FINE_TUNE:
            self.split = num_blocks - trainable_blocks
        else:
            self.split = 0

        for block in self._frozen_blocks():
            block.requires_grad_(False)
        self.train()

    def _frozen_blocks(self) -> list[nn.Module]:
        return list(self.backbone.blocks[: self.split])

    def _trainable_chain(self) -> list[nn.Module]:
        return list(self.backbone.blocks[self.split :])

    def train(self, mode: bool = True) -> TransferModel:
        """Set training mode on the head and trainable blocks, keeping frozen blocks in eval mode."""
        super().train(mode)
        for block in self._frozen_blocks():
            block.eval()
        return self

    def frozen_features(self, x: Tensor) -> Tensor:
        """Run the frozen blocks on (N, 3, H, W) images without autograd.

        Returns pooled features (N, num_features) in feature-extraction mode, the
        (N, C, h, w) map that blocks[split] consumes in fine-tune mode, and `x` itself in
        full mode. The result depends only on `x`, so it can be cached.
        """
        if self.split == 0:
            return x

        # eval() again here guards against a caller that switched the backbone to train
        # mode directly, which would update the frozen BatchNorm running statistics.
        frozen = self._frozen_blocks()
        with torch.no_grad():
            for block in frozen:
                block.eval()
                x = block(x)
            if self.mode is TrainingMode.FEATURE_EXTRACTION:
                x = self.backbone.pool(x)
        return x

    def forward_from_features(self, features: Tensor) -> Tensor:
        """Run the trainable blocks, the pooling and the head on `frozen_features` output."""
        x = features
        if self.mode is not TrainingMode.FEATURE_EXTRACTION:
            for block in self._trainable_chain():
                x = block(x)
            x = self.backbone.pool(x)
        return self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        """Return (N, num_classes) logits for (N, 3, H, W) images."""
        return self.forward_from_features(self.frozen_features(x))

    def _is_trainable_key(self, key: str) -> bool:
        if key.startswith(_HEAD_PREFIX):
            return True
        if key.startswith(_BLOCKS_PREFIX):
            block_index = int(key[len(_BLOCKS_PREFIX) :].split(".", 1)[0])
            return block_index >= self.split
        return False

    def _trainable_entries(self) -> dict[str, Tensor]:
        state = self.state_dict()
        return {key: value for key, value in state.items() if self._is_trainable_key(key)}

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Return detached copies of the head's and trainable blocks' state-dict entries.

        Parameters and buffers (BatchNorm running statistics and num_batches_tracked) are
        included, with the same keys as in state_dict().
        """
        return {key: value.detach().clone() for key, value in self._trainable_entries().items()}

    def trainable_buffer_names(self) -> set[str]:
        """Return the keys of trainable_state_dict() that are buffers, not parameters."""
        trainable_keys = set(self._trainable_entries())
        return {name for name, _ in self.named_buffers() if name in trainable_keys}

    def load_trainable_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Copy `state` into the head and trainable blocks, leaving frozen blocks untouched.

        `state` must have exactly the keys of trainable_state_dict() with the same
        shapes. Raises ValueError naming the first missing, unexpected or mis-shaped key.
        Raises TypeError for a value that is not a tensor. Nothing is loaded when it raises.
        """
        expected = self._trainable_entries()
        for key, target in expected.items():
            if key not in state:
                raise ValueError(f"trainable state is missing key {key!r}")
            value = state[key]
            if not isinstance(value, Tensor):
                raise TypeError(
                    f"trainable state entry {key!r} must be a tensor, got {type(value).__name__}"
                )
            if value.shape != target.shape:
                raise ValueError(
                    f"trainable state entry {key!r} has shape {tuple(value.shape)} "
                    f"but the model expects {tuple(target.shape)}"
                )
        unexpected = [key for key in state if key not in expected]
        if unexpected:
            key = unexpected[0]
            reason = "not part of the model"
            if key in self.state_dict():
                reason = f"frozen in {self.mode.value} mode"
            raise ValueError(f"trainable state has unexpected key {key!r}: {reason}")

        # strict=False because `state` deliberately leaves out the frozen entries.
        self.load_state_dict(dict(state), strict=False)
