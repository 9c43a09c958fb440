"""Configuration of the Doc-to-LoRA hypernetwork.

One pydantic model holds every choice the training experiments vary: which
trunk (direct attention pooling or a Perceiver), which base-model activations
feed it, which layers get LoRA, and the heads' shape. It is saved as JSON next to
the safetensors weights (``save_pretrained``), with the base model's fingerprint
and dimensions so loading against another model fails loudly.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..saved_config import SavedConfig

CONFIG_VERSION = 1


class HypernetConfig(SavedConfig):
    """Doc-to-LoRA hypernetwork configuration.

    The ``base_*`` fields are filled from the base model by
    :meth:`lora_memory.hypernet.DocToLoRA.for_base_model`; the rest are choices.
    """

    reader: Literal["learned", "associative"] = Field(
        "learned", description="learned: a trained trunk and heads write A and B (DocToLoRA); associative: a "
                               "closed-form associative memory of the chunk's next tokens, keyed on the target "
                               "modules' own inputs (hypernet.associative.AssociativeReader), nothing trained but "
                               "the key covariance."
    )
    associative_alpha: float = Field(64.0, gt=0, description="Associative reader: scale of each stored next-token "
                                                             "output embedding.")
    associative_mu: float = Field(1.0, gt=0, description="Associative reader: weight of the key covariance against "
                                                         "the chunk's own keys (larger: other inputs move less).")
    associative_map_rank: int = Field(
        0, ge=0, description="Associative reader: rank of the trained correction to how a query meets the stored "
                             "keys, plus a trained map of the stored values (0: the closed form alone, nothing "
                             "to train)."
    )
    companion: HypernetConfig | None = Field(
        None, description="A second reader, reader='associative', whose adapter is added to this one's on its own "
                          "target modules (model.DocToLoRA.add_companion): the learned reader answers what it was "
                          "trained on (needles, fact sheets) and the associative memory reads prose. Its weights "
                          "are saved in the same checkpoint, under 'companion.'."
    )
    trunk: Literal["pooling", "perceiver"] = Field("pooling", description="Direct attention pooling, or a Perceiver.")
    target_module: str = Field("mlp.down_proj", description="Name suffix of the LoRA target inside each layer.")
    target_layers: list[int] | None = Field(None, description="Layers that get LoRA; None means all.")
    rank: int = Field(8, ge=1, description="LoRA rank per chunk.")
    lora_scaling: float | None = Field(None, description="Output scaling; None means D2L's 2*r**1.5 / r.")
    input_layer: int | None = Field(
        8, description="hidden_states index feeding every target layer (early exit); None = each layer's own input."
    )
    max_chunk_tokens: int = Field(256, ge=8, description="Longest chunk the hypernetwork encodes in one pass.")
    chat_wrap: bool = Field(True, description="Wrap each chunk as a user chat turn before encoding it.")
    dedupe_bias: bool = Field(
        True, description="When composing K chunks, count the shared bias term (bias_B @ bias_A) once, not K times."
    )

    # pooling trunk
    key_dim: int = Field(64, ge=1, description="Dimension of the pooling keys and queries.")
    query_hops: int = Field(
        1, ge=1, description="Pooling passes: after the first, each query adds a projection of what it pooled, "
                             "so later passes look for what depends on this document."
    )
    activation_keys: bool = Field(
        False, description="Also key each B row's slot on the target module's own input one token before the "
                           "tokens that B row pooled (pooling trunk): an A row that lives where the question's "
                           "activations do, bound to the value its B row writes. Runs the encoder to the deepest "
                           "target layer instead of input_layer."
    )
    # perceiver trunk
    latent_dim: int = Field(256, ge=8, description="Perceiver latent size.")
    n_latents: int = Field(16, ge=1, description="Learned latent queries.")
    n_blocks: int = Field(2, ge=1, description="Encoder cross-attention blocks.")
    n_heads: int = Field(4, ge=1, description="Attention heads in the Perceiver.")
    # heads
    head_rank: int | None = Field(64, description="Rank of the per-layer maps to A/B rows; None = full maps.")
    l2_normalize: bool = Field(False, description="L2-normalise the trunk output before the heads (D2L).")
    head_init: Literal["zero_map", "zero_b_scaler"] = Field(
        "zero_map", description="zero_map: maps start at 0 (pooling); zero_b_scaler: B scalers start at 0 (D2L)."
    )

    # discovered from the base model
    base_fingerprint: str | None = None
    base_name: str | None = None
    base_hidden_size: int | None = None
    base_num_layers: int | None = None
    layers_prefix: str | None = Field(None, description="Qualified name of the decoder layer list.")
    module_d_in: int | None = None
    module_d_out: int | None = None
    config_version: int = CONFIG_VERSION


    @model_validator(mode="after")
    def _check(self) -> HypernetConfig:
        if self.reader == "associative" and (not self.activation_keys or self.dedupe_bias):
            raise ValueError("the associative reader keys on the target modules' inputs and has no bias: it needs "
                             "activation_keys=true and dedupe_bias=false")
        if self.companion is not None:
            self._check_companion(self.companion)
        if self.activation_keys and self.trunk != "pooling":
            raise ValueError("activation_keys is a pooling-trunk option")
        if self.trunk == "perceiver" and self.latent_dim % self.n_heads:
            raise ValueError(f"latent_dim ({self.latent_dim}) must be divisible by n_heads ({self.n_heads})")
        if self.base_num_layers is not None:
            if self.input_layer is not None and not 0 <= self.input_layer <= self.base_num_layers:
                raise ValueError(f"input_layer must be in 0..{self.base_num_layers}, got {self.input_layer}")
            bad = [i for i in self.target_layers or [] if not 0 <= i < self.base_num_layers]
            if bad:
                raise ValueError(f"target_layers {bad} out of range for {self.base_num_layers} layers")
        return self

    def _check_companion(self, other: HypernetConfig) -> None:
        if self.reader != "learned" or other.reader != "associative" or other.companion is not None:
            raise ValueError("a companion is an associative reader (with no companion of its own) beside a learned one")
        if other.max_chunk_tokens != self.max_chunk_tokens:
            raise ValueError(f"the companion reads chunks of {other.max_chunk_tokens} tokens, this reader "
                             f"{self.max_chunk_tokens}: both must read the same chunks")
        if None not in (self.base_fingerprint, other.base_fingerprint) and self.base_fingerprint != other.base_fingerprint:
            raise ValueError("the companion was built for another base model")
        mine, theirs = (None if c.target_layers is None else set(c.target_layers) for c in (self, other))
        if other.target_module == self.target_module and (mine is None or theirs is None or mine & theirs):
            raise ValueError("the companion's target modules must differ from this reader's")

    @property
    def scaling(self) -> float:
        """The LoRA scaling, ``alpha / rank``."""
        return self.lora_scaling if self.lora_scaling is not None else 2 * self.rank**1.5 / self.rank

    @property
    def layers(self) -> list[int]:
        """The target layers, in order."""
        if self.target_layers is not None:
            return list(self.target_layers)
        if self.base_num_layers is None:
            raise ValueError("target layers unknown until the config is bound to a base model")
        return list(range(self.base_num_layers))

    def module_name(self, layer: int) -> str:
        """Full name of the target module in ``layer``."""
        return f"{self.layers_prefix}.{layer}.{self.target_module}"

    @property
    def encoder_depth(self) -> int:
        """How many base-model layers the encoder pass must run (into the deepest target layer with
        ``activation_keys``).
        """
        if self.activation_keys:
            return max(self.layers) + 1
        if self.input_layer is not None:
            return self.input_layer
        return max(self.layers)  # hidden_states[i] is the input of layer i

