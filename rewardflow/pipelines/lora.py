"""LoRA and the reference policy of a :class:`~rewardflow.pipelines.base.Generator`.

Attach a peft LoRA adapter to the denoiser (:meth:`LoraMixin.add_lora`), write it in the file layout plain diffusers
reads (:meth:`~LoraMixin.save_lora`, read back by ``pipe.load_lora_weights``), load one (:meth:`~LoraMixin.load_lora`),
and run the frozen reference policy (adapters disabled, or a snapshot for full fine-tuning) inside
:meth:`~LoraMixin.reference`.
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from safetensors import safe_open

# the file name diffusers' ``save_lora_weights`` writes and ``load_lora_weights`` looks for
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


class LoraMixin:
    """LoRA adapters, the reference policy and the other training helpers on ``self.denoiser``.

    Adapters set ``pipeline_class`` (the diffusers pipeline class or its name, whose ``save_lora_weights`` writes
    the LoRA file), ``lora_component`` ("unet" or "transformer") and ``default_lora_targets``.
    """

    denoiser: torch.nn.Module
    default_lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")

    # set by each adapter: the diffusers pipeline class (its ``save_lora_weights`` writes the LoRA file) and the
    # name of the denoiser component in that pipeline ("unet" or "transformer")
    pipeline_class: Any = None
    lora_component: str = "unet"

    def add_lora(self, rank: int = 4, alpha: float | None = None, target_modules: Sequence[str] | None = None,
                 init: str | bool = "gaussian") -> None:
        """Attach a peft LoRA adapter to the denoiser; only its weights are trainable afterwards."""
        from peft import LoraConfig  # lazy: peft is a heavy import, needed only when a LoRA is attached

        targets = list(target_modules or self.default_lora_targets)
        self.denoiser.requires_grad_(False)
        self.denoiser.add_adapter(LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights=init,
                                             target_modules=targets))

    def save_lora(self, save_directory: str | os.PathLike, adapter_name: str = "default",
                  state_dict: dict[str, torch.Tensor] | None = None) -> str:
        """Write the denoiser's LoRA so plain diffusers reads it: ``pipe.load_lora_weights(save_directory)``.

        As the diffusers training scripts do (``examples/text_to_image/train_text_to_image_lora.py`` for UNets,
        ``examples/dreambooth/train_dreambooth_lora_sd3.py`` for transformers): the peft state dict
        (``get_peft_model_state_dict``), converted to the diffusers key layout for UNets
        (``convert_state_dict_to_diffusers``), written by the pipeline class's ``save_lora_weights`` together
        with the LoRA config (rank, alpha, targets) as adapter metadata. Returns the path of the written file.
        ``state_dict``: the denoiser's (trainable) weights to write instead of its own, e.g. gathered from shards.
        """
        from peft.utils import get_peft_model_state_dict  # lazy: heavy import, needed only to save a LoRA

        if not self.has_lora() or adapter_name not in getattr(self.denoiser, "peft_config", {}):
            raise ValueError(f"save_lora: the denoiser has no LoRA adapter {adapter_name!r} "
                             "(attach one with gen.add_lora(...) or gen.load_lora(DIR))")
        if self.lora_component not in ("unet", "transformer"):
            raise ValueError(f"lora_component must be 'unet' or 'transformer', got {self.lora_component!r}")
        writer = self._lora_writer()
        state = get_peft_model_state_dict(self.denoiser, state_dict=state_dict, adapter_name=adapter_name)
        state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
        if self.lora_component == "unet":
            from diffusers.utils import convert_state_dict_to_diffusers  # lazy: diffusers is a heavy import

            state = convert_state_dict_to_diffusers(state)
        meta = self.denoiser.peft_config[adapter_name].to_dict()
        os.makedirs(save_directory, exist_ok=True)
        writer.save_lora_weights(str(save_directory), **{f"{self.lora_component}_lora_layers": state,
                                                       f"{self.lora_component}_lora_adapter_metadata": meta})
        return os.path.join(str(save_directory), LORA_WEIGHT_NAME)

    def _lora_writer(self):
        cls = self.pipeline_class
        if isinstance(cls, str):
            import diffusers  # lazy: heavy import, needed only to resolve a class name

            cls = getattr(diffusers, cls)
        if cls is not None and hasattr(cls, "save_lora_weights"):
            return cls
        if self.lora_component == "unet":
            # a UNet pipeline without LoRA support of its own (the toy one): the SD 1.x file layout
            from diffusers.loaders import StableDiffusionLoraLoaderMixin  # lazy: diffusers is a heavy import

            return StableDiffusionLoraLoaderMixin
        raise ValueError(f"{type(self).__name__}.pipeline_class ({cls!r}) has no save_lora_weights; set "
                         "pipeline_class to the diffusers pipeline class of this model family")

    def load_lora(self, lora_dir: str | os.PathLike, adapter_name: str = "default", trainable: bool = True,
                  weight_name: str | None = None) -> None:
        """Load a LoRA saved by :meth:`save_lora` (or any diffusers LoRA file of this family's denoiser) into
        the adapter, through diffusers' ``load_lora_adapter`` (the per-model half of ``pipe.load_lora_weights``:
        prefix filtering, key conversion, rank/alpha from the stored metadata). The base weights are frozen;
        ``trainable``: the LoRA weights require grad (as after :meth:`add_lora`), else they are frozen too."""
        path = str(lora_dir)
        if os.path.isdir(path):
            f = os.path.join(path, weight_name or LORA_WEIGHT_NAME)
            if not os.path.isfile(f):
                raise FileNotFoundError(f"LoRA file not found: {f} (write one with gen.save_lora(DIR) or "
                                        "pipe.save_lora_weights(DIR, ...))")
        elif not os.path.isfile(path):
            raise FileNotFoundError(f"LoRA directory or file not found: {path}")
        else:
            path, weight_name = os.path.dirname(path) or ".", os.path.basename(path)
        if adapter_name in getattr(self.denoiser, "peft_config", {}):
            raise ValueError(f"the denoiser already has a LoRA adapter named {adapter_name!r}; pass another "
                             "adapter_name")
        weight_name = weight_name or LORA_WEIGHT_NAME
        with safe_open(os.path.join(path, weight_name), framework="pt") as fh:
            prefixes = {k.split(".", 1)[0] for k in fh.keys()}
        if self.lora_component not in prefixes:
            raise ValueError(f"{os.path.join(path, weight_name)} holds no LoRA weights for the "
                             f"{self.lora_component!r} component (key prefixes: {sorted(prefixes)}); files in other "
                             "layouts (kohya / A1111) load with diffusers' pipe.load_lora_weights")
        if prefixes - {self.lora_component}:
            warnings.warn(f"{os.path.join(path, weight_name)}: only the {self.lora_component} LoRA is loaded; "
                          f"the weights for {sorted(prefixes - {self.lora_component})} are ignored", stacklevel=2)
        self.denoiser.load_lora_adapter(path, prefix=self.lora_component, adapter_name=adapter_name,
                                        weight_name=weight_name)
        self.denoiser.requires_grad_(False)
        if trainable:
            for n, p in self.denoiser.named_parameters():
                if "lora_" in n and f".{adapter_name}." in f"{n}.":
                    p.requires_grad_(True)

    def has_lora(self) -> bool:
        return bool(getattr(self.denoiser, "_hf_peft_config_loaded", False))

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.denoiser.parameters() if p.requires_grad]

    def snapshot_reference(self) -> None:
        """For full fine-tuning: keep a frozen copy of the current denoiser as the reference policy."""
        self._reference = copy.deepcopy(self.denoiser).requires_grad_(False).eval()

    @contextlib.contextmanager
    def reference(self):
        """Run the reference policy inside the block: LoRA adapters disabled, or the snapshot from
        :meth:`snapshot_reference` swapped in."""
        if self.has_lora():
            self.denoiser.disable_adapters()
            try:
                yield self
            finally:
                self.denoiser.enable_adapters()
        elif getattr(self, "_reference", None) is not None:
            policy, self.denoiser = self.denoiser, self._reference
            try:
                yield self
            finally:
                self.denoiser = policy
        else:
            raise RuntimeError("reference() needs LoRA adapters (gen.add_lora(...)) or a frozen copy "
                               "(gen.snapshot_reference()) for full fine-tuning")

    def enable_gradient_checkpointing(self) -> None:
        if hasattr(self.denoiser, "enable_gradient_checkpointing"):
            self.denoiser.enable_gradient_checkpointing()
