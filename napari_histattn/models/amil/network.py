"""Attention-based multiple-instance learning (A-MIL; Ilse, Tomczak & Welling, 2018).

An image or slide is a bag of N patches. A patch encoder (see
:mod:`napari_histattn.models.encoders`) maps each patch to an embedding
``h_n`` (D-d); attention pooling weighs the embeddings and a linear head
classifies the pooled bag embedding.

Attention (Ilse et al., Eqs. 8-9), per branch k of K:

- plain: ``s_nk = w_k^T tanh(V h_n)``
- gated: ``s_nk = w_k^T (tanh(V h_n) * sigmoid(U h_n))``

``a_nk = softmax_n(s_nk)`` over the bag's (unmasked) instances; the bag
embedding is ``z_k = sum_n a_nk h_n``; the K embeddings are concatenated
(``K * D``) and a linear layer gives the class logits. The pooling is a
weighted sum over instances, so the output does not depend on the order of the
instances in the bag.

Shapes: patches ``(B, N, C, h, w)``; features ``(B, N, D)``; optional ``mask``
``(B, N)`` bool, True for real instances (False for padding of ragged bags).
:class:`~napari_histattn.models.outputs.MILOutput` has ``logits`` ``(B, n_classes)``,
``attention`` ``(B, N)`` (rows sum to 1, exactly 0 at padding) and
``attention_logits`` ``(B, N)`` (the scores ``s`` before the softmax; at padding
they are the unmasked raw scores, meaningless). With K > 1 branches both are the
mean over branches, so ``attention`` still sums to 1; the per-branch values are
available from :meth:`AttentionMIL.attention_scores`.

Registered name: ``"amil"`` (the family plug-in is :mod:`napari_histattn.models.amil`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from napari_histattn.models.amil.instances import (
    DECISIONS,
    DecisionRules,
    annotation_loss,
    clam_instance_loss,
    negative_instance_loss,
    top_k_margin,
)
from napari_histattn.models.encoders import MIN_PATCH_SIZE, build_encoder
from napari_histattn.models.outputs import MILOutput
from napari_histattn.models.registry import ModelExample, register_model
from napari_histattn.models.tile_evidence import TileClassifier, last_convolution

#: Default number of patches encoded at once by :meth:`AttentionMIL.encode`.
DEFAULT_CHUNK_SIZE = 512


class AttentionPooling(nn.Module):
    """Attention pooling over a bag: plain (tanh) or gated (tanh * sigmoid).

    Parameters
    ----------
    in_dim
        Instance embedding width D.
    attn_dim
        Hidden width of the attention network (L in Ilse et al.; 128 there).
    n_branches
        Number K of attention branches.
    gated
        Gated attention if True.
    dropout
        Dropout on the attention hidden layer (training only).
    """

    def __init__(
        self,
        in_dim: int,
        attn_dim: int = 128,
        n_branches: int = 1,
        gated: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.gated = gated
        self.n_branches = n_branches
        self.attention_v = nn.Linear(in_dim, attn_dim)
        self.attention_u = nn.Linear(in_dim, attn_dim) if gated else None
        self.dropout = nn.Dropout(dropout)
        self.attention_w = nn.Linear(attn_dim, n_branches)

    def scores(self, features: Tensor) -> Tensor:
        """Attention scores ``s`` before the softmax: ``(B, N, D) -> (B, N, K)``."""
        hidden = torch.tanh(self.attention_v(features))
        if self.attention_u is not None:
            hidden = hidden * torch.sigmoid(self.attention_u(features))
        return self.attention_w(self.dropout(hidden))

    def forward(
        self, features: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Pool a batch of bags.

        Parameters
        ----------
        features
            ``(B, N, D)`` instance embeddings.
        mask
            ``(B, N)`` bool, True for real instances; None means all are real.

        Returns
        -------
        tuple[Tensor, Tensor, Tensor]
            Pooled embeddings ``(B, K, D)``, weights ``(B, N, K)`` (softmax over N,
            0 at masked instances) and scores ``(B, N, K)``.
        """
        scores = self.scores(features)
        masked = scores
        if mask is not None:
            masked = scores.masked_fill(~mask.unsqueeze(-1), float("-inf"))
        weights = torch.softmax(masked, dim=1)
        pooled = torch.einsum("bnk,bnd->bkd", weights, features)
        return pooled, weights, scores


class AttentionMIL(DecisionRules, nn.Module):
    """A-MIL: patch encoder, attention pooling and a linear multi-class head.

    Parameters
    ----------
    encoder
        Patch encoder name (``"small_cnn"``, ``"resnet18"``, ``"tiny"``), or
        ``"none"`` for a model that only takes precomputed features (B, N, embed_dim).
    in_channels
        Channels of the patches.
    patch_size
        Patch side in pixels (metadata for preprocessing; checked against the
        encoder's minimum).
    n_classes
        Number of classes of the head.
    embed_dim
        Instance embedding width D; None keeps the encoder's natural width
        (required with ``encoder="none"``).
    attn_dim
        Hidden width of the attention network.
    n_branches
        Attention branches K.
    gated
        Gated attention (True) or plain tanh attention.
    dropout
        Dropout on the attention hidden layer and before the head.
    standardise
        With ``encoder="none"``: standardise each feature dimension with a fixed
        mean and std (buffers set from the training data by
        :meth:`set_feature_scaling`, saved with the weights). Cached features of
        a frozen encoder come at whatever scale it has; this puts them at unit
        scale for the attention network.
    instance_loss_weight
        CLAM-SB's instance-level clustering loss (Lu et al. 2021), weighted against
        the bag loss as ``(1 - w) * bag + w * instance`` (CLAM uses 0.3; 0: off).
        One binary instance classifier per class: for a bag of class ``c`` the
        ``instance_k`` most attended instances are "in class ``c``" and the
        ``instance_k`` least attended "not", a pseudo-label that pushes attention
        onto the instances that carry the evidence.
    instance_k
        Instances per side of that loss (at most a third of a bag).
    decision
        How the slide call is made (two-class models; index 1 is the positive class):
        ``"attention"``, the head on the attention-pooled embedding (Ilse et al.);
        ``"top_k"``, the mean instance margin ``l1 - l0`` of the ``decision_k``
        instances with the largest margin (the head applied to each instance alone:
        max-instance evidence, as CAMELYON's "one small focus makes a positive
        slide"); ``"max"``, the larger of the two margins. Training picks one on
        validation data (:func:`napari_histattn.training.calibration.choose_decision`).
        The head is linear, so the attention logit is the attention-weighted mean of
        the instance logits, which a focus with 5 % of the attention cannot move.
    decision_k
        Instances averaged by the instance rules.
    decision_threshold
        Two classes: the margin ``l1 - l0`` above which the slide is positive (0: the
        arg-max), chosen with the rule on validation data.
    topk_loss_weight
        Weight of a max-instance loss during training: cross-entropy of the top-k
        instance margin against the slide label (Campanella et al. 2019), which
        teaches the head to score single instances (0: off).
    negative_loss_weight
        Weight of the negative-bag instance loss (two classes): every instance of a
        bag of class 0 is trained to score class 0
        (:func:`~.instances.negative_instance_loss`; 0: off). With the max-instance
        loss it is instance-level MIL from slide labels alone.
    annotation_loss_weight
        Weight of the cross-entropy of instance logits against instance labels, for the
        instances that carry one (tiles inside a pathologist's annotation;
        ``instance_targets`` of the output, -1 elsewhere).
    """

    def __init__(
        self,
        encoder: str = "small_cnn",
        in_channels: int = 3,
        patch_size: int = 28,
        n_classes: int = 2,
        embed_dim: int | None = None,
        attn_dim: int = 128,
        n_branches: int = 1,
        gated: bool = True,
        dropout: float = 0.0,
        standardise: bool = False,
        instance_loss_weight: float = 0.0,
        instance_k: int = 8,
        decision: str = "attention",
        decision_k: int = 1,
        decision_threshold: float = 0.0,
        topk_loss_weight: float = 0.0,
        annotation_loss_weight: float = 1.0,
        negative_loss_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if n_classes < 1:
            raise ValueError(f"n_classes must be at least 1, got {n_classes}")
        if n_branches < 1:
            raise ValueError(f"n_branches must be at least 1, got {n_branches}")
        self.encoder_name = encoder
        self.n_classes = n_classes
        self.patch_size = patch_size
        self.encoder: nn.Module | None
        if encoder == "none":
            if embed_dim is None:
                raise ValueError('encoder="none" needs embed_dim (the width of the given features)')
            self.encoder, self.embed_dim = None, embed_dim
        else:
            minimum = MIN_PATCH_SIZE.get(encoder, 1)
            if patch_size < minimum:
                raise ValueError(
                    f"encoder {encoder!r} needs patches of at least {minimum} px, got {patch_size}"
                )
            self.encoder, self.embed_dim = build_encoder(encoder, in_channels, embed_dim)
        self.standardise = bool(standardise)
        if self.standardise:
            if self.encoder is not None:
                raise ValueError('standardise applies to features: use it with encoder="none"')
            self.register_buffer("feature_mean", torch.zeros(self.embed_dim))
            self.register_buffer("feature_std", torch.ones(self.embed_dim))
        if not 0.0 <= instance_loss_weight < 1.0 or instance_k < 1:
            raise ValueError("instance_loss_weight must be within [0, 1) and instance_k >= 1")
        self.instance_loss_weight = float(instance_loss_weight)
        self.instance_k = int(instance_k)
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {DECISIONS}, got {decision!r}")
        if decision != "attention" and n_classes != 2:
            raise ValueError(f"decision {decision!r} needs two classes, not {n_classes}")
        if (
            decision_k < 1
            or min(topk_loss_weight, annotation_loss_weight, negative_loss_weight) < 0
        ):
            raise ValueError("decision_k must be >= 1 and the loss weights >= 0")
        self.decision = decision
        self.decision_k = int(decision_k)
        self.decision_threshold = float(decision_threshold)
        self.topk_loss_weight = float(topk_loss_weight)
        self.annotation_loss_weight = float(annotation_loss_weight)
        self.negative_loss_weight = float(negative_loss_weight)
        #: Weight of the slide-label terms of the loss; 0 in stage 1 of two-stage training
        #: (annotated tiles only). A training-time switch, not configuration.
        self.bag_loss_weight = 1.0
        if self.instance_loss_weight > 0:
            self.instance_classifiers = nn.ModuleList(
                nn.Linear(self.embed_dim, 2) for _ in range(n_classes)
            )
        self.pooling = AttentionPooling(self.embed_dim, attn_dim, n_branches, gated, dropout)
        self.head = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(n_branches * self.embed_dim, n_classes)
        )

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def encode(self, patches: Tensor, chunk_size: int | None = DEFAULT_CHUNK_SIZE) -> Tensor:
        """Encode patches in chunks of at most ``chunk_size``.

        Each chunk is moved to the model's device on its own, so patches may stay
        on the CPU while the model runs on a GPU; under ``torch.no_grad`` or
        ``torch.inference_mode`` the memory held is one chunk's activations plus
        the features. Under autograd every chunk's activations are kept for the
        backward pass, as without chunking.

        Parameters
        ----------
        patches
            ``(B, N, C, h, w)`` or ``(N, C, h, w)``.
        chunk_size
            Patches per encoder call; None encodes everything at once.

        Returns
        -------
        Tensor
            ``(B, N, D)`` or ``(N, D)`` features on the model's device.
        """
        if self.encoder is None:
            raise ValueError(
                'this A-MIL model has encoder="none": pass features to forward_features'
            )
        if patches.dim() not in (4, 5):
            raise ValueError(
                f"patches must be (B, N, C, h, w) or (N, C, h, w), got shape {tuple(patches.shape)}"
            )
        lead = patches.shape[:-3]
        flat = patches.reshape(-1, *patches.shape[-3:])
        device = self._device()
        step = flat.shape[0] if chunk_size is None else max(1, int(chunk_size))
        chunks = [
            self.encoder(flat[start : start + step].to(device, non_blocking=True))
            for start in range(0, flat.shape[0], step)
        ]
        if not chunks:
            return torch.zeros(*lead, self.embed_dim, device=device)
        return torch.cat(chunks).reshape(*lead, self.embed_dim)

    def warm_start_feature_encoder(self, weights: str | Path) -> str:
        """Load a registry encoder's local weights into this model's patch encoder (for
        ``encoder="resnet18"``, or any registry name); returns their SHA-256."""
        from napari_histattn.models.encoders import create_encoder

        if self.encoder is None:
            raise ValueError('a model with encoder="none" has no encoder to warm-start')
        loaded = create_encoder(self.encoder_name, weights)
        trunk = (
            self.encoder[0]
            if isinstance(self.encoder, nn.Sequential)
            and len(self.encoder) == 3
            and isinstance(self.encoder[1], nn.Linear)
            else self.encoder
        )
        trunk.load_state_dict(loaded.module.state_dict(), strict=True)
        return str(loaded.weights_sha256)

    @property
    def gradcam_layer(self) -> nn.Module:
        """The patch encoder's last convolution: the layer Grad-CAM reads."""
        return last_convolution(self.encoder)

    def tile_classifier(self) -> nn.Module:
        """The head on each tile's own embedding, as an image classifier (``(B, C, p, p)``
        tiles to an output whose ``logits`` are ``(B, n_classes)``): the per-tile evidence
        that post-hoc explanations explain (:meth:`instance_logits` of one tile)."""
        if self.encoder is None:
            raise ValueError('a model with encoder="none" has no patch encoder to explain')
        encoder = self.encoder
        return TileClassifier(self, lambda tiles: self.instance_logits(encoder(tiles)[None])[0])

    def set_feature_scaling(self, mean: Tensor, std: Tensor) -> None:
        """Set the per-dimension mean and std that ``standardise`` divides features by."""
        if not self.standardise:
            raise ValueError("this model was built with standardise=False")
        self.get_buffer("feature_mean").copy_(mean.reshape(-1))
        self.get_buffer("feature_std").copy_(std.reshape(-1).clamp_min(1e-6))

    def attention_scores(self, features: Tensor) -> Tensor:
        """Per-branch attention scores ``(B, N, K)`` before the softmax."""
        return self.pooling.scores(features)

    def forward_features(self, features: Tensor, mask: Tensor | None = None) -> MILOutput:
        """Classify bags of precomputed instance features.

        Parameters
        ----------
        features
            ``(B, N, D)`` embeddings (from :meth:`encode`, or any extractor when
            ``encoder="none"``).
        mask
            ``(B, N)`` bool, True for real instances. Every bag needs at least one.

        Returns
        -------
        MILOutput
            ``logits`` ``(B, n_classes)``, ``attention`` and ``attention_logits`` ``(B, N)``.
        """
        if features.dim() != 3 or features.shape[-1] != self.embed_dim:
            raise ValueError(
                f"features must be (B, N, {self.embed_dim}), got shape {tuple(features.shape)}"
            )
        if features.shape[1] == 0:
            raise ValueError("empty bag: A-MIL needs at least one instance per bag")
        if mask is not None:
            mask = mask.to(device=features.device, dtype=torch.bool)
            if mask.shape != features.shape[:2]:
                raise ValueError(
                    f"mask must be (B, N) = {tuple(features.shape[:2])}, got {tuple(mask.shape)}"
                )
            if not bool(mask.any(dim=1).all()):
                raise ValueError("every bag needs at least one unmasked instance")
        if self.standardise:
            mean, std = self.get_buffer("feature_mean"), self.get_buffer("feature_std")
            features = (features - mean) / std
        pooled, weights, scores = self.pooling(features, mask)
        bag_logits = self.head(pooled.flatten(1))
        instance_logits = self.instance_logits(features)
        return MILOutput(
            logits=self.decide(bag_logits, instance_logits, mask, self.decision),
            attention=weights.mean(-1),
            attention_logits=scores.mean(-1),
            features=features,
            mask=mask,
            bag_logits=bag_logits,
            instance_logits=instance_logits,
        )

    def instance_logits(self, features: Tensor) -> Tensor:
        """The head applied to each instance alone (the bag made of that instance):
        ``(B, N, D) -> (B, N, n_classes)``."""
        branches = int(self.pooling.n_branches)
        return self.head(features.repeat(1, 1, branches) if branches > 1 else features)

    def loss(self, output: MILOutput, targets: Tensor) -> Tensor:
        """Training loss: cross-entropy of the attention-pooled logits, plus (when weighted
        in) the max-instance loss, the negative-bag loss, the annotation loss and CLAM-SB's
        instance loss (:mod:`.instances`)."""
        logits = output.bag_logits if output.bag_logits is not None else output.logits
        bag = self.bag_loss_weight * nn.functional.cross_entropy(logits, targets)
        if output.instance_logits is not None:
            if self.topk_loss_weight > 0 and self.n_classes == 2 and self.bag_loss_weight > 0:
                margin = top_k_margin(output.instance_logits, output.mask, self.decision_k)
                bag = bag + self.topk_loss_weight * nn.functional.binary_cross_entropy_with_logits(
                    margin, targets.float()
                )
            if self.negative_loss_weight > 0 and self.n_classes == 2 and self.bag_loss_weight > 0:
                negative = negative_instance_loss(output, targets)
                if negative is not None:
                    bag = bag + self.negative_loss_weight * negative
            annotated = annotation_loss(output) if self.annotation_loss_weight > 0 else None
            if annotated is not None:
                bag = bag + self.annotation_loss_weight * annotated
        w = self.instance_loss_weight
        if w == 0 or output.features is None:
            return bag
        clam = clam_instance_loss(output, targets, self.instance_classifiers, self.instance_k)
        return bag if clam is None else (1 - w) * bag + w * clam

    def forward(
        self,
        patches: Tensor,
        mask: Tensor | None = None,
        chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    ) -> MILOutput:
        """Encode a batch of bags of patches ``(B, N, C, h, w)`` and classify them.

        A model with ``encoder="none"`` takes bags of features ``(B, N, D)`` instead
        (cached tile features). See :meth:`encode` for ``chunk_size`` and
        :meth:`forward_features` for the output.
        """
        if self.encoder is None and patches.dim() == 3:
            return self.forward_features(patches.to(self._device()), mask)
        if patches.dim() != 5:
            raise ValueError(f"patches must be (B, N, C, h, w), got shape {tuple(patches.shape)}")
        return self.forward_features(self.encode(patches, chunk_size), mask)


def _example_input(
    config: dict[str, Any], batch_size: int, seed: int
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    generator = torch.Generator().manual_seed(seed)
    n_instances = 5
    size = int(config["patch_size"])
    patches = torch.rand(
        batch_size, n_instances, config["in_channels"], size, size, generator=generator
    )
    mask = torch.ones(batch_size, n_instances, dtype=torch.bool)
    mask[0, -2:] = False  # a ragged first bag, padded to N
    return (patches,), {"mask": mask, "chunk_size": 3}


# The class is its own builder: create_model reads the defaults from __init__.
register_model(
    "amil",
    example=ModelExample(
        config={"encoder": "tiny", "patch_size": 12, "embed_dim": 8, "attn_dim": 6, "n_classes": 3},
        make_input=_example_input,
    ),
)(AttentionMIL)
