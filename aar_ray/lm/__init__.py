"""The causal LM that answers with a label token, in parts by concern, below everything that uses
it: the inference engines (aar_ray.engines) serve it and the GPU-scale student and teacher
(aar_ray.models.causal_lm) fit it. Nothing here imports another part of aar_ray but `errors`.

    config     CausalLMConfig: which weights, prompt length, the LoRA fit, precision (no torch)
    weights    a config's `model:` as a local folder, offline (hub cache, GGUF, tiny models)
    prompts    rows as the sandbox's prompts and the two label tokens read after them
    label_lm   LabelLM: the model, label-token scoring and the LoRA training loop (torch, peft)
    adapters   where LoRA adapters are saved and fetched (a folder or a pyarrow.fs URI)

Import the names from their module (`from aar_ray.lm.config import CausalLMConfig`); importing
this package loads nothing.
"""
