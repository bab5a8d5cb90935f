"""One decoding step of a Hugging Face causal LM with its KV cache as flat tensors.

transformers 5's DynamicCache is not registered as a pytree, so torch.export cannot take or
return one: the cache goes in and out as two stacked tensors, keys and values
[layers, batch, heads, past, head_dim], and the cache object is rebuilt inside forward.

    step(input_ids [B, T], attention_mask [B, past + T], position_ids [B, T], past_keys, past_values)
      -> logits of the last position [B, vocab], present_keys, present_values ([..., past + T, ...])

With past = 0 it is the prompt's (prefill) step; with T = 1 every later step: one graph for both,
which exportable.decoding runs inside an ONNX Loop.
"""

import torch
from torch import nn
from transformers import DynamicCache


class CausalLMStep(nn.Module):
    # Captured without torch.onnx's backed_size_oblivious (exporters.onnx._exported_program says
    # why): GPT-Neo's capture time grew steeply with depth under it. The capture sample
    # (families.text_generator: batch 2, past 3, 4 new tokens) keeps every dynamic dim off 0 and 1.
    size_oblivious_export = False

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.layers = int(model.config.num_hidden_layers)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                past_keys: torch.Tensor, past_values: torch.Tensor):
        cache = DynamicCache(ddp_cache_data=[(past_keys[i], past_values[i]) for i in range(self.layers)],
                             config=self.model.config)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True)
        layers = out.past_key_values.layers
        keys = torch.stack([layers[i].keys for i in range(self.layers)])
        values = torch.stack([layers[i].values for i in range(self.layers)])
        return out.logits[:, -1, :], keys, values


class CausalLMWithPast(nn.Module):
    """The decoder-with-past shape that Optimum's ORTModelForCausalLM and onnxruntime-genai users
    expect: one cache tensor per layer and kind, logits of every new position.

        forward(input_ids [B, T], attention_mask [B, past + T], position_ids [B, T],
                past_key_values.0.key, past_key_values.0.value, ... [B, heads, past, head_dim])
          -> logits [B, T, vocab], present.0.key, present.0.value, ... [B, heads, past + T, head_dim]

    The cache arrives as varargs (exporters.onnx nests their dynamic dims as one tuple, which is
    how torch.export matches a *args parameter)."""

    size_oblivious_export = False  # as CausalLMStep

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.layers = int(model.config.num_hidden_layers)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                *past: torch.Tensor):
        cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(self.layers)],
                             config=self.model.config)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True)
        present = []
        for layer in out.past_key_values.layers[:self.layers]:
            present += [layer.keys, layer.values]
        return (out.logits, *present)
