"""Stand-in for the checkpoint's remote config code (``auto_map`` in config.json).

Written for the contract tests, not taken from the checkpoint: it only gives the published
config.json its structure (a vision tower config and a Llama language-model config), which is
all vLLM reads to build its engine config. No weights, no modelling code.
"""

from transformers import LlamaConfig, PretrainedConfig

VISION_DEFAULTS = {
    "num_channels": 3, "patch_size": 14, "image_size": 448, "qkv_bias": False,
    "hidden_size": 3200, "num_attention_heads": 25, "intermediate_size": 12800,
    "qk_normalization": True, "num_hidden_layers": 45, "use_flash_attn": True,
    "hidden_act": "gelu", "norm_type": "rms_norm", "layer_norm_eps": 1e-6, "dropout": 0.0,
    "drop_path_rate": 0.0, "attention_dropout": 0.0, "initializer_range": 0.02,
    "initializer_factor": 0.1,
}
CHAT_DEFAULTS = {
    "use_backbone_lora": 0, "use_llm_lora": 0, "select_layer": -1, "force_image_size": None,
    "downsample_ratio": 0.5, "template": None, "dynamic_image_size": False,
    "use_thumbnail": False, "ps_version": "v1", "min_dynamic_patch": 1, "max_dynamic_patch": 6,
}


def _take(kwargs: dict, defaults: dict) -> dict:
    return {k: kwargs.pop(k, v) for k, v in defaults.items()}


class InternVisionConfig(PretrainedConfig):
    model_type = "intern_vit_6b"

    def __init__(self, **kwargs):
        own = _take(kwargs, VISION_DEFAULTS)
        super().__init__(**kwargs)
        for k, v in own.items():
            setattr(self, k, v)


class InternVLChatConfig(PretrainedConfig):
    model_type = "internvl_chat"

    def __init__(self, vision_config=None, llm_config=None, **kwargs):
        own = _take(kwargs, CHAT_DEFAULTS)
        super().__init__(**kwargs)
        self.vision_config = InternVisionConfig(**(vision_config or {}))
        self.llm_config = LlamaConfig(**(llm_config or {}))
        for k, v in own.items():
            setattr(self, k, v)
        self.tie_word_embeddings = self.llm_config.tie_word_embeddings
