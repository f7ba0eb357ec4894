"""Checkpoints: our safetensors folders (`native`), MiniMind native `.pth` import (`minimind_pth`),
Hugging Face export / import (`hf`, with MoE in `hf_moe`).

`.pth` files are read with `torch.load(weights_only=True)`: pickles that would run code are refused.
`check_checkpoint` checks a folder from its config.json and safetensors header alone (`header`), so a
process can refuse a bad checkpoint before it starts the ones that would load it.
"""
from .common import CONFIG_FILE, MODEL_FILE, CheckpointError
from .hf import config_from_hf, export_hf, hf_config_dict, import_hf
from .minimind_pth import (MINIMIND2_DEFAULTS, MINIMIND3_DEFAULTS, fields_from_minimind_config,
                           PthOptions, infer_config_from_state_dict, load_minimind_pth)
from .header import check_header_fits, read_header
from .native import check_checkpoint, load_model, load_score_model, read_checkpoint_config, save_model

__all__ = ["CheckpointError", "check_checkpoint", "read_header", "check_header_fits", "save_model", "load_model",
           "load_score_model", "read_checkpoint_config",
           "load_minimind_pth", "PthOptions", "infer_config_from_state_dict", "fields_from_minimind_config",
           "MINIMIND2_DEFAULTS", "MINIMIND3_DEFAULTS", "export_hf", "import_hf", "hf_config_dict",
           "config_from_hf", "MODEL_FILE", "CONFIG_FILE"]
